//! The relay against an L4 proxy and against no proxy at all, on one machine, in one run.
//!
//! ```text
//! cargo bench --bench relay_bench                # the whole run (a few minutes)
//! cargo bench --bench relay_bench -- --quick     # fewer samples and sessions, to try it out
//! ```
//!
//! Options: `--samples N` (commands per latency figure), `--bulk-mib N` (the Receive
//! output), `--logons N`, `--idle-sessions N` (0: none), `--paths direct,haproxy,relay`
//! (a subset, e.g. to profile the relay alone), `--concurrency 1,10,100` (the sessions
//! at once for the latency figures), `--relay-bin PATH` (another build of the relay, e.g.
//! an older commit's, on the same run's double and client).
//!
//! It starts, on loopback addresses 127.0.0.180-182 (run it in a network namespace of its
//! own when other things bind there: `unshare -n bash -c 'ip link set lo up; cargo bench
//! --bench relay_bench'`): the fast target double of `double.rs` (in this process),
//! HAProxy in TCP mode in front of it (`haproxy` from the distribution, with a generated
//! configuration), and the relay's release build. The load generator is the client of
//! `winrm-relay run` (`fanout::Session`), on three paths: to the double; through HAProxy
//! to the double (Negotiate end to end, as direct); through the relay (CredSSP to the
//! relay, Negotiate from the relay to the double).
//!
//! CPU figures are the proxy process's own utime+stime from `/proc/<pid>/stat`, so the
//! speed of the client and the double, which share this process, does not count.
//! Prints a table and writes JSON to `<target dir>/bench/relay_bench.json`.

mod double;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use secrecy::SecretString;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use winrm_relay::fanout::{CommandLine, CommandOutput, Endpoint, Relay, Session};
use winrm_relay::vault::DelegatedCredentials;

const DOUBLE: &str = "127.0.0.180:5985";
const HAPROXY: &str = "127.0.0.181:5985";
const RELAY: &str = "127.0.0.182:5985";
const ACCOUNTS: [(&str, &str, &str); 2] = [("LAB", "alice", "alice-bench-pw"), ("LAB", "bob", "bob-bench-pw")];
/// Every step of a bench session must end within this.
const SESSION_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// WS-Man round trips per command: Command, Receive (the double answers at once, in one
/// Receive), Signal terminate.
const ROUND_TRIPS_PER_COMMAND: usize = 3;
/// /proc reports CPU times in USER_HZ, which Linux fixes at 100 for user space.
const USER_HZ: f64 = 100.0;
/// Logons under way at once on every path, as the client queues them through a relay.
const LOGONS_AT_ONCE: usize = 8;

/// Children to kill when the bench stops early.
static CHILDREN: Mutex<Vec<Child>> = Mutex::new(Vec::new());

fn fail(message: impl std::fmt::Display) -> ! {
    eprintln!("relay_bench: {message}");
    stop_children();
    std::process::exit(1)
}

fn stop_children() {
    for mut child in CHILDREN.lock().map(|mut c| std::mem::take(&mut *c)).unwrap_or_default() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

struct Options {
    samples: usize,
    concurrency: Vec<usize>,
    bulk_bytes: usize,
    logons: usize,
    idle_sessions: usize,
    /// The paths measured (all by default): one alone, to profile it.
    paths: Vec<Path3>,
    /// Another build of the relay to measure (an older commit's, to compare).
    relay_bin: PathBuf,
}

impl Options {
    fn parse() -> Options {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let quick = args.iter().any(|a| a == "--quick");
        let mut options = Options {
            samples: 10_000,
            concurrency: vec![1, 10, 100],
            bulk_bytes: 100 << 20,
            logons: 1_000,
            idle_sessions: 10_000,
            paths: Path3::ALL.to_vec(),
            relay_bin: PathBuf::from(env!("CARGO_BIN_EXE_winrm-relay")),
        };
        if quick {
            options.samples = 1_000;
            options.bulk_bytes = 20 << 20;
            options.logons = 100;
            options.idle_sessions = 1_000;
        }
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let mut value = || {
                it.next()
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or_else(|| fail(format!("{arg} needs a number")))
            };
            match arg.as_str() {
                "--samples" => options.samples = value(),
                "--bulk-mib" => options.bulk_bytes = value() << 20,
                "--logons" => options.logons = value(),
                "--idle-sessions" => options.idle_sessions = value(),
                "--paths" => {
                    let names = it.next().map(String::as_str).unwrap_or_default();
                    options.paths = Path3::ALL
                        .into_iter()
                        .filter(|p| names.split(',').any(|n| n == p.name()))
                        .collect();
                }
                "--relay-bin" => {
                    options.relay_bin = it
                        .next()
                        .map(PathBuf::from)
                        .unwrap_or_else(|| fail("--relay-bin needs a path"));
                }
                "--concurrency" => {
                    let levels = it.next().map(String::as_str).unwrap_or_default();
                    options.concurrency = levels
                        .split(',')
                        .map(|level| match level.parse::<usize>() {
                            Ok(level) if level > 0 => level,
                            _ => fail(format!("--concurrency needs numbers above 0, not {level:?}")),
                        })
                        .collect();
                }
                _ => {}
            }
        }
        options
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Path3 {
    Direct,
    Haproxy,
    Relay,
}

impl Path3 {
    const ALL: [Path3; 3] = [Path3::Direct, Path3::Haproxy, Path3::Relay];

    fn name(self) -> &'static str {
        match self {
            Path3::Direct => "direct",
            Path3::Haproxy => "haproxy",
            Path3::Relay => "relay",
        }
    }
}

/// One process whose CPU time and memory the bench reads.
#[derive(Clone, Copy)]
struct Watched(u32);

impl Watched {
    /// utime + stime in seconds.
    fn cpu(self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.0))
            .unwrap_or_else(|e| fail(format!("process {} gone: {e}", self.0)));
        // Fields after the command name (which may hold spaces): state is the first, utime the 12th.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, f)| f)
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or_default();
        (ticks(11) + ticks(12)) / USER_HZ
    }

    fn rss_kib(self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0)).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_default()
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        // `cargo test --benches` runs bench targets once without --bench: nothing to test here.
        println!("relay_bench: a measurement, run it with `cargo bench --bench relay_bench`");
        return;
    }
    let mut options = Options::parse();
    let fd_limit = raise_fd_limit();
    // Two sockets per idle session in the relay (client, target) and in this process
    // (client, double), and room for everything else.
    let most_sessions = (fd_limit.saturating_sub(512) / 2) as usize;
    if options.idle_sessions > most_sessions {
        println!(
            "relay_bench: the file descriptor limit is {fd_limit}: {most_sessions} idle sessions, not {}",
            options.idle_sessions
        );
        options.idle_sessions = most_sessions;
    }
    let work = target_dir().join("bench").join("relay_bench.work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap_or_else(|e| fail(format!("{}: {e}", work.display())));

    let double_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("double")
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(e));
    let accounts: Vec<double::Account> = ACCOUNTS
        .iter()
        .map(|(d, u, p)| (d.to_string(), u.to_string(), p.to_string()))
        .collect();
    let double_addr: SocketAddr = DOUBLE.parse().expect("an address");
    double_runtime
        .block_on(double::serve(double_addr, accounts))
        .unwrap_or_else(|e| fail(format!("the double cannot listen on {DOUBLE}: {e}")));

    let haproxy = start_haproxy(&work, fd_limit);
    let relay = start_relay(&work, &options.relay_bin);
    let watched: HashMap<Path3, Watched> = [(Path3::Haproxy, haproxy), (Path3::Relay, relay)].into();

    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(e));
    let report = client.block_on(run(&options, &watched, relay));
    stop_children();
    drop(client);
    drop(double_runtime);

    print_report(&report);
    let json_path = target_dir().join("bench").join("relay_bench.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&report).expect("json")).unwrap_or_else(|e| fail(e));
    println!("\nJSON: {}", json_path.display());
}

/// Absolute, because the relay runs in the work directory and is given paths under it.
fn target_dir() -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    std::path::absolute(&dir).unwrap_or(dir)
}

/// 10,000 sessions through the relay are 20,000 sockets in the relay and in this process:
/// raise the limit (the children inherit it) and return it.
fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    const WANTED: u64 = 65_536;
    if setrlimit(Resource::RLIMIT_NOFILE, WANTED, WANTED).is_err() {
        // Without CAP_SYS_RESOURCE: as far as the hard limit goes.
        if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
    getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft)
}

fn wait_listening(addr: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            fail(format!("{what} does not listen on {addr}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spawn(mut command: Command, log: &Path, what: &str) -> Watched {
    let log = std::fs::File::create(log).unwrap_or_else(|e| fail(e));
    let child = command
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap_or_else(|e| fail(e)))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| fail(format!("cannot start {what}: {e}")));
    let pid = child.id();
    CHILDREN.lock().expect("children").push(child);
    Watched(pid)
}

fn start_haproxy(work: &Path, fd_limit: u64) -> Watched {
    // Two sockets per connection, and haproxy refuses a maxconn the FD limit cannot hold.
    let maxconn = fd_limit.saturating_sub(100) / 2;
    let config = work.join("haproxy.cfg");
    std::fs::write(
        &config,
        format!(
            "global\n  maxconn {maxconn}\n\ndefaults\n  mode tcp\n  timeout connect 10s\n  timeout client 24h\n  \
             timeout server 24h\n\nlisten winrm\n  bind {HAPROXY}\n  server target {DOUBLE}\n"
        ),
    )
    .unwrap_or_else(|e| fail(e));
    let mut command = Command::new("haproxy");
    command.arg("-db").arg("-f").arg(&config);
    let watched = spawn(
        command,
        &work.join("haproxy.log"),
        "haproxy (apt-get install -y haproxy)",
    );
    wait_listening(HAPROXY, "haproxy");
    watched
}

fn start_relay(work: &Path, binary: &Path) -> Watched {
    let mut users = String::new();
    for (domain, user, password) in ACCOUNTS {
        let hash = winrm_relay::proto::credssp::nt_hash(password);
        users.push_str(&format!("{domain}\\{user}:{}\n", hex::encode(*hash)));
    }
    let users_path = work.join("users");
    std::fs::write(&users_path, users).unwrap_or_else(|e| fail(e));
    let config = work.join("relay.toml");
    let w = work.display();
    std::fs::write(
        &config,
        format!(
            "[listen]\nhttp = \"{RELAY}\"\ntls_cert = \"{w}/relay.crt\"\ntls_key = \"{w}/relay.key\"\n\n\
             [auth]\nusers_file = \"{w}/users\"\n\n[audit]\npath = \"{w}/audit.jsonl\"\n\n\
             [session]\nidle_timeout_secs = 86400\nmax_lifetime_secs = 86400\n\n\
             [limits]\nmax_sessions = 20000\nmax_sessions_per_user = 20000\nmax_shells_per_user = 20000\n\
             max_unauthenticated_per_source = 64\n\n\
             [[allow]]\nusers = ['LAB\\alice', 'LAB\\bob']\ntargets = [\"127.0.0.180\"]\nshells = [\"cmd\"]\n"
        ),
    )
    .unwrap_or_else(|e| fail(e));
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(&users_path, std::fs::Permissions::from_mode(0o600));
    let mut command = Command::new(binary);
    command.arg("serve").arg("--config").arg(&config).current_dir(work);
    let watched = spawn(command, &work.join("relay.log"), "the relay");
    wait_listening(RELAY, "the relay");
    watched
}

fn endpoint(path: Path3, relay: &Relay) -> Endpoint {
    match path {
        Path3::Direct => Endpoint::direct(DOUBLE, SESSION_TIMEOUT).unwrap_or_else(|e| fail(e)),
        Path3::Haproxy => Endpoint::direct(HAPROXY, SESSION_TIMEOUT).unwrap_or_else(|e| fail(e)),
        Path3::Relay => Endpoint::through_relay(relay, DOUBLE, SESSION_TIMEOUT),
    }
}

fn credentials() -> Vec<DelegatedCredentials> {
    ACCOUNTS
        .iter()
        .map(|(d, u, p)| DelegatedCredentials::new(*d, *u, SecretString::from(p.to_string())))
        .collect()
}

fn hello() -> CommandLine {
    CommandLine {
        command: "hello".into(),
        arguments: vec![],
    }
}

async fn open<'a>(endpoint: &'a Endpoint, credentials: &'a DelegatedCredentials) -> Session<'a> {
    let mut session = Session::connect(endpoint, credentials, SESSION_TIMEOUT)
        .await
        .unwrap_or_else(|f| fail(format!("{}: {}", endpoint.url(), f.message)));
    session
        .create_shell()
        .await
        .unwrap_or_else(|f| fail(format!("{}: {}", endpoint.url(), f.message)));
    session
}

async fn run_one(session: &mut Session<'_>, command: &CommandLine, output: &mut CommandOutput) {
    output.stdout.clear();
    output.stderr.clear();
    session
        .run(command, output)
        .await
        .unwrap_or_else(|f| fail(format!("running {}: {}", command.command, f.message)));
    if output.exit_code != 0 {
        fail(format!("{} exited {}", command.command, output.exit_code));
    }
}

/// p50/p99 of one command (three round trips) per session at `concurrency` sessions.
async fn latency(
    endpoint: Arc<Endpoint>,
    credentials: Arc<Vec<DelegatedCredentials>>,
    concurrency: usize,
    samples: usize,
    proxy: Option<Watched>,
) -> Value {
    let ready = Arc::new(tokio::sync::Barrier::new(concurrency + 1));
    let finished = Arc::new(tokio::sync::Barrier::new(concurrency + 1));
    let taken = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for i in 0..concurrency {
        let (endpoint, credentials) = (endpoint.clone(), credentials.clone());
        let (ready, finished, taken) = (ready.clone(), finished.clone(), taken.clone());
        tasks.push(tokio::spawn(async move {
            let credentials = &credentials[i % credentials.len()];
            let mut session = open(&endpoint, credentials).await;
            let (command, mut output) = (hello(), CommandOutput::default());
            for _ in 0..3 {
                run_one(&mut session, &command, &mut output).await;
            }
            ready.wait().await;
            let mut times = Vec::with_capacity(samples / concurrency + 1);
            while taken.fetch_add(1, Ordering::Relaxed) < samples {
                let started = Instant::now();
                run_one(&mut session, &command, &mut output).await;
                times.push(started.elapsed());
            }
            finished.wait().await;
            let _ = session.close().await;
            times
        }));
    }
    ready.wait().await;
    let (cpu, started) = (proxy.map(Watched::cpu), Instant::now());
    finished.wait().await;
    let wall = started.elapsed().as_secs_f64();
    let cpu = proxy.zip(cpu).map(|(p, before)| p.cpu() - before);
    let mut times = Vec::with_capacity(samples);
    for task in tasks {
        times.extend(task.await.unwrap_or_else(|e| fail(e)));
    }
    times.sort();
    let micros = |q: usize| times[(times.len() * q / 100).min(times.len() - 1)].as_secs_f64() * 1e6;
    let requests = (times.len() * ROUND_TRIPS_PER_COMMAND) as f64;
    json!({
        "concurrency": concurrency,
        "samples": times.len(),
        "command_p50_us": micros(50),
        "command_p99_us": micros(99),
        "round_trip_p50_us": micros(50) / ROUND_TRIPS_PER_COMMAND as f64,
        "round_trip_p99_us": micros(99) / ROUND_TRIPS_PER_COMMAND as f64,
        "requests_per_s": requests / wall,
        "proxy_cpu_per_request_us": cpu.map(|c| c / requests * 1e6),
    })
}

/// One `bulk` command of `bytes` bytes of output on one session.
async fn throughput(
    endpoint: &Endpoint,
    credentials: &DelegatedCredentials,
    bytes: usize,
    proxy: Option<Watched>,
) -> Value {
    let mut session = open(endpoint, credentials).await;
    let mut output = CommandOutput::default();
    let warm_up = CommandLine {
        command: "bulk".into(),
        arguments: vec![(4 << 20).to_string()],
    };
    run_one(&mut session, &warm_up, &mut output).await;
    let command = CommandLine {
        command: "bulk".into(),
        arguments: vec![bytes.to_string()],
    };
    let (cpu, started) = (proxy.map(Watched::cpu), Instant::now());
    run_one(&mut session, &command, &mut output).await;
    let wall = started.elapsed().as_secs_f64();
    let cpu = proxy.zip(cpu).map(|(p, before)| p.cpu() - before);
    let _ = session.close().await;
    let mib = bytes as f64 / (1 << 20) as f64;
    json!({
        "bytes": bytes,
        "mib_per_s": mib / wall,
        "proxy_cpu_per_mib_ms": cpu.map(|c| c / mib * 1e3),
    })
}

/// `count` logons, each: log on, create a shell (the relay's first target authentication),
/// delete it, close.
async fn logons(
    endpoint: &Endpoint,
    credentials: &[DelegatedCredentials],
    count: usize,
    proxy: Option<Watched>,
) -> Value {
    let queue = Semaphore::new(LOGONS_AT_ONCE);
    let (cpu, started) = (proxy.map(Watched::cpu), Instant::now());
    let one = |i: usize| {
        let queue = &queue;
        async move {
            let _turn = queue.acquire().await.expect("open semaphore");
            let session = open(endpoint, &credentials[i % credentials.len()]).await;
            session.close().await.unwrap_or_else(|e| fail(e));
        }
    };
    futures_util::future::join_all((0..count).map(one)).await;
    let wall = started.elapsed().as_secs_f64();
    let cpu = proxy.zip(cpu).map(|(p, before)| p.cpu() - before);
    json!({
        "logons": count,
        "logons_per_s": count as f64 / wall,
        "proxy_cpu_per_logon_ms": cpu.map(|c| c / count as f64 * 1e3),
    })
}

/// The relay's resident memory as idle sessions (logged on, a shell open, so a target
/// connection too) pile up, then after they end.
async fn idle_memory(endpoint: &Endpoint, credentials: &[DelegatedCredentials], count: usize, relay: Watched) -> Value {
    let baseline = relay.rss_kib();
    let checkpoints: Vec<usize> = [count / 10, count / 4, count / 2, count]
        .into_iter()
        .filter(|&n| n > 0)
        .collect();
    let mut sessions = Vec::with_capacity(count);
    let mut points = Vec::new();
    let queue = Semaphore::new(LOGONS_AT_ONCE * 4);
    for &checkpoint in &checkpoints {
        let batch = (sessions.len()..checkpoint).map(|i| {
            let queue = &queue;
            async move {
                let _turn = queue.acquire().await.expect("open semaphore");
                open(endpoint, &credentials[i % credentials.len()]).await
            }
        });
        sessions.extend(futures_util::future::join_all(batch).await);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss = relay.rss_kib();
        println!("  idle sessions {checkpoint}: relay RSS {rss} KiB");
        points.push(json!({"sessions": checkpoint, "relay_rss_kib": rss}));
    }
    let full = relay.rss_kib();
    let idle_cpu_before = relay.cpu();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let idle_cpu_per_s = (relay.cpu() - idle_cpu_before) / 5.0;
    let closing = sessions.into_iter().map(|s| async move {
        let _ = s.close().await;
    });
    futures_util::future::join_all(closing).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = relay.rss_kib();
    let per_session = (full.saturating_sub(baseline)) as f64 / count as f64;
    let (first, last) = (&points[0], &points[points.len() - 1]);
    let slope = (last["relay_rss_kib"].as_f64().unwrap_or_default()
        - first["relay_rss_kib"].as_f64().unwrap_or_default())
        / (last["sessions"].as_f64().unwrap_or_default() - first["sessions"].as_f64().unwrap_or_default()).max(1.0);
    json!({
        "sessions": count,
        "baseline_rss_kib": baseline,
        "rss_kib": full,
        "kib_per_session": per_session,
        "kib_per_session_slope": slope,
        "idle_cpu_percent": idle_cpu_per_s * 100.0,
        "rss_after_close_kib": after,
        "points": points,
    })
}

async fn run(options: &Options, watched: &HashMap<Path3, Watched>, relay_process: Watched) -> Value {
    let relay = Relay::parse(&format!("http://{RELAY}"), || Err("no TLS".to_string())).unwrap_or_else(|e| fail(e));
    let credentials = Arc::new(credentials());
    let mut by_path = serde_json::Map::new();
    for &path in &options.paths {
        let endpoint = Arc::new(endpoint(path, &relay));
        let proxy = watched.get(&path).copied();
        let mut figures = serde_json::Map::new();
        let mut latencies = Vec::new();
        for &c in &options.concurrency {
            println!("{}: latency at {c} sessions", path.name());
            latencies.push(latency(endpoint.clone(), credentials.clone(), c, options.samples, proxy).await);
        }
        figures.insert("latency".into(), Value::Array(latencies));
        println!("{}: Receive throughput", path.name());
        figures.insert(
            "throughput".into(),
            throughput(&endpoint, &credentials[0], options.bulk_bytes, proxy).await,
        );
        println!("{}: logons", path.name());
        figures.insert(
            "logons".into(),
            logons(&endpoint, &credentials, options.logons, proxy).await,
        );
        by_path.insert(path.name().into(), Value::Object(figures));
    }
    println!("relay: idle sessions");
    let endpoint = endpoint(Path3::Relay, &relay);
    let idle = if options.idle_sessions > 0 {
        idle_memory(&endpoint, &credentials, options.idle_sessions, relay_process).await
    } else {
        Value::Null
    };
    json!({
        "machine": machine(),
        "relay_bin": options.relay_bin.display().to_string(),
        "samples": options.samples,
        "paths": by_path,
        "relay_idle": idle,
        "ratios": ratios(&Value::Object(by_path.clone())),
    })
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    json!({
        "cpu": model,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "kernel": kernel.trim(),
        "loadavg_at_end": load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
    })
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Value {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => json!((a / b * 100.0).round() / 100.0),
        _ => Value::Null,
    }
}

fn ratios(paths: &Value) -> Value {
    let get = |path: &str, pointer: &str| paths[path].pointer(pointer).and_then(Value::as_f64);
    let mut out = serde_json::Map::new();
    let levels = paths["relay"]["latency"].as_array().map_or(0, Vec::len);
    if levels == 0 {
        return Value::Null;
    }
    for i in 0..levels {
        let c = paths["relay"]["latency"][i]["concurrency"].as_u64().unwrap_or_default();
        for q in ["p50", "p99"] {
            let pointer = format!("/latency/{i}/command_{q}_us");
            out.insert(
                format!("latency_{q}_at_{c}_relay_vs_haproxy"),
                ratio(get("relay", &pointer), get("haproxy", &pointer)),
            );
            out.insert(
                format!("latency_{q}_at_{c}_relay_vs_direct"),
                ratio(get("relay", &pointer), get("direct", &pointer)),
            );
        }
        let pointer = format!("/latency/{i}/proxy_cpu_per_request_us");
        out.insert(
            format!("cpu_per_request_at_{c}_relay_vs_haproxy"),
            ratio(get("relay", &pointer), get("haproxy", &pointer)),
        );
    }
    out.insert(
        "throughput_relay_vs_direct".into(),
        ratio(
            get("relay", "/throughput/mib_per_s"),
            get("direct", "/throughput/mib_per_s"),
        ),
    );
    out.insert(
        "throughput_relay_vs_haproxy".into(),
        ratio(
            get("relay", "/throughput/mib_per_s"),
            get("haproxy", "/throughput/mib_per_s"),
        ),
    );
    out.insert(
        "logons_per_s_relay_vs_direct".into(),
        ratio(
            get("relay", "/logons/logons_per_s"),
            get("direct", "/logons/logons_per_s"),
        ),
    );
    Value::Object(out)
}

fn print_report(report: &Value) {
    let paths = &report["paths"];
    let num = |v: &Value| v.as_f64().map_or("-".to_string(), |x| format!("{x:.1}"));
    println!("\nmachine: {}", report["machine"]);
    println!("relay: {}", report["relay_bin"]);
    println!("\nlatency of one command = 3 WS-Man round trips (µs), proxy CPU per round trip (µs)");
    println!(
        "{:<8} {:>5} {:>8} {:>9} {:>9} {:>9} {:>11}",
        "path", "conc", "samples", "p50", "p99", "req/s", "cpu/req"
    );
    for path in Path3::ALL {
        for level in paths[path.name()]["latency"].as_array().into_iter().flatten() {
            println!(
                "{:<8} {:>5} {:>8} {:>9} {:>9} {:>9} {:>11}",
                path.name(),
                level["concurrency"].to_string(),
                level["samples"].to_string(),
                num(&level["command_p50_us"]),
                num(&level["command_p99_us"]),
                num(&level["requests_per_s"]),
                num(&level["proxy_cpu_per_request_us"]),
            );
        }
    }
    println!(
        "\n{:<8} {:>12} {:>14} {:>10} {:>14}",
        "path", "Receive MiB/s", "cpu ms/MiB", "logons/s", "cpu ms/logon"
    );
    for path in Path3::ALL {
        let p = &paths[path.name()];
        println!(
            "{:<8} {:>12} {:>14} {:>10} {:>14}",
            path.name(),
            num(&p["throughput"]["mib_per_s"]),
            num(&p["throughput"]["proxy_cpu_per_mib_ms"]),
            num(&p["logons"]["logons_per_s"]),
            num(&p["logons"]["proxy_cpu_per_logon_ms"]),
        );
    }
    let idle = &report["relay_idle"];
    println!(
        "\nrelay idle: {} sessions, RSS {} -> {} KiB ({} KiB/session, slope {}), idle CPU {}%, after close {} KiB",
        idle["sessions"],
        idle["baseline_rss_kib"],
        idle["rss_kib"],
        num(&idle["kib_per_session"]),
        num(&idle["kib_per_session_slope"]),
        num(&idle["idle_cpu_percent"]),
        idle["rss_after_close_kib"],
    );
    println!("\nratios:");
    for (name, value) in report["ratios"].as_object().into_iter().flatten() {
        println!("  {name:<42} {value}");
    }
}
