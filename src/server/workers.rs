//! Connections run on one single-threaded runtime per core.
//!
//! A connection's work is a chain of short steps (read, unseal, rewrite, seal,
//! write) separated by waits on its two sockets. On a work-stealing runtime
//! each wait can resume on another thread, and waking that thread costs more
//! than the step itself; a connection kept on one thread from accept to end
//! pays only for its own socket readiness. The accept loops stay on the main
//! runtime (with signals, reload and `/metrics`) and hand each accepted
//! connection to the worker with the fewest connections.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{conn, ListenerKind, Shared};

/// An accepted connection on its way to a worker.
pub(crate) struct Handoff {
    pub stream: std::net::TcpStream,
    pub peer: SocketAddr,
    pub kind: ListenerKind,
}

struct Worker {
    queue: mpsc::UnboundedSender<Handoff>,
    /// Connections handed to this worker and not yet finished.
    connections: Arc<AtomicUsize>,
    thread: JoinHandle<()>,
}

/// The worker threads; dropping the queues (see [`Workers::finish`]) lets
/// them end once their connections have.
pub(crate) struct Workers {
    workers: Vec<Worker>,
    /// Cancelled when the main runtime stops waiting for sessions: a worker's
    /// runtime then drops whatever is still running, and its thread ends.
    released: CancellationToken,
}

impl Workers {
    /// One worker per available core.
    pub fn start(shared: &Arc<Shared>) -> std::io::Result<Workers> {
        let count = std::thread::available_parallelism().map_or(1, |n| n.get());
        let released = CancellationToken::new();
        let mut workers = Vec::with_capacity(count);
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let (queue, arrivals) = mpsc::unbounded_channel();
            let connections = Arc::new(AtomicUsize::new(0));
            let thread = std::thread::Builder::new()
                .name(format!("relay-worker-{index}"))
                .spawn({
                    let shared = shared.clone();
                    let connections = connections.clone();
                    let released = released.clone();
                    move || runtime.block_on(run_worker(arrivals, connections, shared, released))
                })?;
            workers.push(Worker {
                queue,
                connections,
                thread,
            });
        }
        Ok(Workers { workers, released })
    }

    /// Give a connection to the least busy worker.
    pub fn hand_off(&self, handoff: Handoff) {
        let Some(worker) = self
            .workers
            .iter()
            .min_by_key(|worker| worker.connections.load(Ordering::Relaxed))
        else {
            return;
        };
        worker.connections.fetch_add(1, Ordering::Relaxed);
        if worker.queue.send(handoff).is_err() {
            // The worker is gone (its runtime panicked); the connection closes.
            worker.connections.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// After the sessions have ended or the shutdown deadline has passed:
    /// stop the workers and wait for their threads.
    pub fn finish(self) {
        self.released.cancel();
        for worker in self.workers {
            drop(worker.queue);
            if worker.thread.join().is_err() {
                tracing::error!("a worker thread panicked");
            }
        }
    }
}

/// A connection in a worker's count until its task ends, however it ends.
struct Counted(Arc<AtomicUsize>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn run_worker(
    mut arrivals: mpsc::UnboundedReceiver<Handoff>,
    connections: Arc<AtomicUsize>,
    shared: Arc<Shared>,
    released: CancellationToken,
) {
    loop {
        let handoff = tokio::select! {
            handoff = arrivals.recv() => handoff,
            _ = released.cancelled() => return,
        };
        let Some(Handoff { stream, peer, kind }) = handoff else {
            break;
        };
        let stream = match tokio::net::TcpStream::from_std(stream) {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, %peer, "cannot take over an accepted connection");
                connections.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
        };
        let counted = Counted(connections.clone());
        let shared_for_task = shared.clone();
        shared.sessions_tracker.spawn(async move {
            let _counted = counted;
            conn::serve(stream, peer, kind, shared_for_task).await;
        });
    }
    // No more arrivals: keep driving this runtime's sessions until released.
    released.cancelled().await;
}
