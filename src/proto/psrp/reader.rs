//! A session's PowerShell streams, read as the relay relays them: the caller
//! feeds what each allowed request and its answer carried (a shell created and
//! whether it compresses, a Command's arguments, the streams of a Send or a
//! Receive) and gets back what happened, as [`Event`]s: a pipeline asked for,
//! its output, errors, input, host responses, its end, and the streams that
//! could not be read.
//!
//! Streams are kept per shell, per pipeline (CommandId, or the runspace pool),
//! per direction and name, each an appended byte stream of fragments (see
//! [`super::fragments`]). Memory is bounded per shell: past the bound the
//! stream that went over is given up, and said so.

use std::collections::HashMap;

use super::compression::decompress_stream;
use super::fragments::StreamAssembler;
use super::messages::{
    host_response, is_final_state, pipeline_input, psrp_output, PsrpMessage, PsrpOutput, CREATE_PIPELINE,
};
use super::pipeline::Pipeline;
use super::{decode_base64, MAX_DECODED};

/// Which way a stream flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The client's Command arguments and Sends.
    ToServer,
    /// The target's Receive responses.
    ToClient,
}

/// One `rsp:Stream` as received (base64 already decoded, not decompressed).
#[derive(Debug, Clone, Copy)]
pub struct StreamData<'a> {
    /// `stdin`, `pr`, `stdout`.
    pub name: &'a str,
    pub command_id: Option<&'a str>,
    pub data: &'a [u8],
}

/// The reader's bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes a shell's streams may hold before messages complete.
    pub max_shell_bytes: usize,
    /// Pipelines (and the pool) a shell may have streams open for.
    pub max_pipelines: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_shell_bytes: 64 << 20,
            max_pipelines: 1024,
        }
    }
}

/// Something the reader saw, in one shell, for one pipeline (`command_id`) or
/// the runspace pool (`None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub shell_id: String,
    pub command_id: Option<String>,
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// A CREATE_PIPELINE put together in full.
    Pipeline { pipeline: Pipeline, compressed: bool },
    /// An output object, as text.
    Output(String),
    /// An error record's message.
    Error(String),
    /// A pipeline state change.
    State {
        state: &'static str,
        reason: Option<String>,
    },
    /// The pipeline reached a final state (after its `State`).
    End(PipelineEnd),
    /// A PIPELINE_INPUT object, as text.
    Input(String),
    /// An answer to a host call.
    HostResponse { method: String, text: String },
    /// Output for a pipeline whose Command the reader never saw (its session
    /// was connected to after it started): said once, before its first event.
    Unseen,
    /// A stream that cannot be read (on): its name and why.
    Undecodable { stream: String, reason: String },
}

/// What a pipeline did, by its end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PipelineEnd {
    pub state: &'static str,
    /// A failed pipeline's error.
    pub reason: Option<String>,
    pub errors: u64,
    /// Bytes of output text.
    pub output_bytes: u64,
    pub input_objects: u64,
    pub host_responses: u64,
    /// The CREATE_PIPELINE was never seen.
    pub unseen: bool,
}

#[derive(Debug, Default)]
struct Stream {
    assembler: StreamAssembler,
    /// Given up: its framing is lost.
    broken: bool,
}

/// A pipeline's (or the pool's) streams and tallies.
#[derive(Debug, Default)]
struct Channel {
    /// The CommandId as the client first wrote it.
    display: Option<String>,
    /// A Command for it passed through the relay.
    commanded: bool,
    /// Its CREATE_PIPELINE was put together.
    created: bool,
    unseen_said: bool,
    tally: PipelineEnd,
    streams: HashMap<(Direction, String), Stream>,
}

#[derive(Debug, Default)]
struct Shell {
    compressed: bool,
    /// The bytes all its streams hold.
    held: usize,
    channels: HashMap<Option<String>, Channel>,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct SessionReader {
    limits: Limits,
    shells: HashMap<String, Shell>,
}

impl SessionReader {
    pub fn new(limits: Limits) -> SessionReader {
        SessionReader {
            limits,
            shells: HashMap::new(),
        }
    }

    /// A PowerShell shell was created; `compressed` as its Create response said.
    pub fn shell_created(&mut self, shell_id: &str, compressed: bool) {
        self.shells.insert(
            shell_id.to_string(),
            Shell {
                compressed,
                ..Shell::default()
            },
        );
    }

    /// Whether the shell's streams are compressed, as far as the reader knows.
    pub fn is_compressed(&self, shell_id: &str) -> bool {
        self.shells.get(shell_id).is_some_and(|s| s.compressed)
    }

    /// The shell was deleted: its streams go.
    pub fn shell_deleted(&mut self, shell_id: &str) {
        self.shells.remove(shell_id);
    }

    /// A Command the target accepted: `arguments` is its rsp:Arguments (base64,
    /// several joined by spaces), the start of its CREATE_PIPELINE; the rest
    /// follows in Sends. Arguments are never compressed.
    pub fn command(&mut self, shell_id: &str, command_id: &str, arguments: &str) -> Vec<Event> {
        let mut events = Vec::new();
        let limits = self.limits;
        let shell = self.shells.entry(shell_id.to_string()).or_default();
        let Some(channel) = channel(shell, shell_id, Some(command_id), limits, &mut events) else {
            return events;
        };
        channel.commanded = true;
        let Some(bytes) = decode_base64(arguments) else {
            if !arguments.trim().is_empty() {
                events.push(undecodable(
                    shell_id,
                    Some(command_id),
                    "stdin",
                    "the Command's arguments are not base64".into(),
                ));
            }
            return events;
        };
        feed(
            shell,
            shell_id,
            Some(command_id),
            Direction::ToServer,
            "stdin",
            &bytes,
            limits,
            &mut events,
        );
        events
    }

    /// The streams of a Send (`ToServer`) or a Receive response (`ToClient`)
    /// the target accepted.
    pub fn streams(&mut self, shell_id: &str, direction: Direction, streams: &[StreamData<'_>]) -> Vec<Event> {
        let mut events = Vec::new();
        let limits = self.limits;
        let shell = self.shells.entry(shell_id.to_string()).or_default();
        for s in streams {
            if s.data.is_empty() {
                continue;
            }
            let name = s.name.to_ascii_lowercase();
            if shell.compressed {
                if stream_broken(shell, s.command_id, direction, &name) {
                    continue;
                }
                match decompress_stream(s.data, MAX_DECODED) {
                    Ok(plain) => feed(
                        shell,
                        shell_id,
                        s.command_id,
                        direction,
                        &name,
                        &plain,
                        limits,
                        &mut events,
                    ),
                    Err(error) => {
                        give_up(shell, s.command_id, direction, &name);
                        events.push(undecodable(shell_id, s.command_id, &name, error.to_string()));
                    }
                }
            } else {
                feed(
                    shell,
                    shell_id,
                    s.command_id,
                    direction,
                    &name,
                    s.data,
                    limits,
                    &mut events,
                );
            }
        }
        events
    }
}

fn key(command_id: Option<&str>) -> Option<String> {
    command_id.map(str::to_ascii_uppercase)
}

fn undecodable(shell_id: &str, command_id: Option<&str>, stream: &str, reason: String) -> Event {
    Event {
        shell_id: shell_id.to_string(),
        command_id: command_id.map(str::to_string),
        kind: EventKind::Undecodable {
            stream: stream.to_string(),
            reason,
        },
    }
}

/// The channel of a pipeline or the pool, made when first seen within the bound.
fn channel<'a>(
    shell: &'a mut Shell,
    shell_id: &str,
    command_id: Option<&str>,
    limits: Limits,
    events: &mut Vec<Event>,
) -> Option<&'a mut Channel> {
    let k = key(command_id);
    if !shell.channels.contains_key(&k) {
        if shell.channels.len() >= limits.max_pipelines {
            events.push(undecodable(
                shell_id,
                command_id,
                "stdin",
                format!(
                    "the shell has {} pipelines open, the most the relay reads at once",
                    limits.max_pipelines
                ),
            ));
            return None;
        }
        shell.channels.insert(
            k.clone(),
            Channel {
                display: command_id.map(str::to_string),
                ..Channel::default()
            },
        );
    }
    shell.channels.get_mut(&k)
}

fn stream_broken(shell: &Shell, command_id: Option<&str>, direction: Direction, name: &str) -> bool {
    shell
        .channels
        .get(&key(command_id))
        .and_then(|c| c.streams.get(&(direction, name.to_string())))
        .is_some_and(|s| s.broken)
}

/// Marks a stream given up and frees what it held.
fn give_up(shell: &mut Shell, command_id: Option<&str>, direction: Direction, name: &str) {
    let Some(channel) = shell.channels.get_mut(&key(command_id)) else {
        return;
    };
    let stream = channel.streams.entry((direction, name.to_string())).or_default();
    shell.held -= stream.assembler.held();
    stream.assembler = StreamAssembler::default();
    stream.broken = true;
}

#[allow(clippy::too_many_arguments)]
fn feed(
    shell: &mut Shell,
    shell_id: &str,
    command_id: Option<&str>,
    direction: Direction,
    name: &str,
    bytes: &[u8],
    limits: Limits,
    events: &mut Vec<Event>,
) {
    let compressed = shell.compressed;
    let Some(channel) = channel(shell, shell_id, command_id, limits, events) else {
        return;
    };
    let stream = channel.streams.entry((direction, name.to_string())).or_default();
    if stream.broken {
        return;
    }
    let before = stream.assembler.held();
    let pushed = stream.assembler.push(bytes, MAX_DECODED);
    let after = stream.assembler.held();
    shell.held = shell.held - before + after;
    let pushed = match pushed {
        Ok(pushed) => pushed,
        Err(error) => {
            give_up(shell, command_id, direction, name);
            events.push(undecodable(shell_id, command_id, name, error.to_string()));
            return;
        }
    };
    for dropped in pushed.dropped {
        events.push(undecodable(shell_id, command_id, name, dropped.to_string()));
    }
    for message in pushed.messages {
        read_message(shell, shell_id, command_id, direction, message, compressed, events);
    }
    if shell.held > limits.max_shell_bytes {
        give_up(shell, command_id, direction, name);
        events.push(undecodable(
            shell_id,
            command_id,
            name,
            format!(
                "the shell's streams hold more than {} bytes of unfinished messages",
                limits.max_shell_bytes
            ),
        ));
    }
}

fn read_message(
    shell: &mut Shell,
    shell_id: &str,
    command_id: Option<&str>,
    direction: Direction,
    message: PsrpMessage,
    compressed: bool,
    events: &mut Vec<Event>,
) {
    let k = key(command_id);
    let Some(channel) = shell.channels.get_mut(&k) else {
        return;
    };
    let display = channel.display.clone();
    let event = |kind| Event {
        shell_id: shell_id.to_string(),
        command_id: display.clone(),
        kind,
    };
    match direction {
        Direction::ToServer => {
            if message.message_type == CREATE_PIPELINE && command_id.is_some() {
                channel.created = true;
                let pipeline = Pipeline::parse(&message.data);
                events.push(event(EventKind::Pipeline { pipeline, compressed }));
            } else if let Some(text) = pipeline_input(&message) {
                channel.tally.input_objects += 1;
                events.push(event(EventKind::Input(text)));
            } else if let Some(answer) = host_response(&message) {
                channel.tally.host_responses += 1;
                events.push(event(EventKind::HostResponse {
                    method: answer.method,
                    text: answer.text,
                }));
            }
        }
        Direction::ToClient => {
            let Some(output) = psrp_output(&message) else {
                return;
            };
            if command_id.is_some() && !channel.commanded && !channel.unseen_said {
                channel.unseen_said = true;
                events.push(event(EventKind::Unseen));
            }
            match output {
                PsrpOutput::Output(text) => {
                    channel.tally.output_bytes += text.len() as u64;
                    events.push(event(EventKind::Output(text)));
                }
                PsrpOutput::Error(text) => {
                    channel.tally.errors += 1;
                    events.push(event(EventKind::Error(text)));
                }
                PsrpOutput::State { state, reason } => {
                    events.push(event(EventKind::State {
                        state,
                        reason: reason.clone(),
                    }));
                    if is_final_state(state) && command_id.is_some() {
                        let mut end = std::mem::take(&mut channel.tally);
                        end.state = state;
                        end.reason = reason;
                        end.unseen = !channel.created;
                        events.push(event(EventKind::End(end)));
                        if let Some(gone) = shell.channels.remove(&k) {
                            let held: usize = gone.streams.values().map(|s| s.assembler.held()).sum();
                            shell.held -= held;
                        }
                    }
                }
            }
        }
    }
}
