//! `pilot-center`: the command line. Everything else is in the library.

use anyhow::Context as _;
use clap::Parser;
use pilot_center::auth::{self, Claims, Role};
use pilot_center::config::Config;
use pilot_center::operator::{self, Operator};
use pilot_center::server::Server;
use pilot_center::telemetry::{self, LogOptions};
use pilot_center::view;
use std::path::PathBuf;
use std::time::Duration;
use std::time::{SystemTime, UNIX_EPOCH};

/// Pilot Center: signaling center for WebRTC media servers (protoo over
/// WebSocket, and gRPC).
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    /// Configuration file (YAML), e.g. center.yaml.
    #[arg(required = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
    /// More detail in the logs (repeat for more).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Also write logs to this file, rotated daily.
    #[arg(long)]
    log_file: Option<PathBuf>,
    /// DEBUG, INFO, WARNING, ERROR or CRITICAL (any case).
    #[arg(long, value_parser = parse_level)]
    log_level: Option<String>,
    /// Do not log to the console.
    #[arg(long)]
    no_console: bool,
    /// Log one JSON object per line.
    #[arg(long)]
    log_json: bool,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Mint an HS256 token with the configured `auth.hs256_secret`.
    Token {
        /// What the holder may do.
        #[arg(long, value_enum)]
        role: Role,
        /// A room the holder may touch (repeat; `*` for all).
        #[arg(long = "room", default_value = "*")]
        rooms: Vec<String>,
        /// Lifetime, e.g. 30m, 24h, 7d.
        #[arg(long, default_value = "24h")]
        ttl: humantime::Duration,
        /// Subject (who holds it).
        #[arg(long, default_value = "operator")]
        sub: String,
        /// The configuration holding the secret.
        #[arg(long)]
        config: PathBuf,
    },
    /// List the rooms of a running center.
    Rooms(Remote),
    /// Show one room: users, sessions, pushers, MSU.
    Room {
        /// The room.
        room_id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// List the sessions (peer identity, transport, address, queue depth).
    Sessions(Remote),
    /// List the MSUs and their rooms.
    Msus(Remote),
    /// List the media relays: each publisher whose media crosses SFUs, the
    /// MSU it goes through and its destinations.
    Relays(Remote),
    /// Remove a user from a room (its sessions get userLeave).
    Kick {
        /// The room.
        room_id: String,
        /// The user.
        user_id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Close a room (every user leaves).
    Close {
        /// The room.
        room_id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Say something in a room as the system.
    Say {
        /// The room.
        room_id: String,
        /// The message.
        text: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Start recording a room: its MSU writes every publisher into one
    /// MP4 file per user (README, "Recording").
    Record {
        /// The room.
        room_id: String,
        /// The recording's id (letters, digits, '-', '_'); made up when
        /// not given.
        #[arg(long)]
        id: Option<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Stop a room's recording (its files are closed).
    StopRecording {
        /// The room.
        room_id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// List the recordings, running and stopped, with their files.
    Recordings {
        /// Only this room's.
        #[arg(long = "room", default_value = "")]
        room_id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Delete a stopped recording and its files on its MSU.
    DeleteRecording {
        /// The recording.
        recording_id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Play a recorded user into a room as a user of your choice (its MSU
    /// joins it and sends the recorded media to every SFU that pulls it).
    Play {
        /// The recording.
        recording_id: String,
        /// The room to play into.
        room_id: String,
        /// The user to play as.
        user_id: String,
        /// Whose files to play (needed when the recording has several users).
        #[arg(long = "of", default_value = "")]
        source_user_id: String,
        /// Start again at the end, until stopped.
        #[arg(long = "loop")]
        looped: bool,
        #[command(flatten)]
        remote: Remote,
    },
    /// Stop a playback (its user leaves).
    StopPlayback {
        /// The playback.
        playback_id: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// List the running playbacks.
    Playbacks(Remote),
    /// Follow the event feed until interrupted.
    Watch {
        /// Only this room (repeat for several).
        #[arg(long = "room")]
        rooms: Vec<String>,
        /// Only this kind, e.g. user_joined (repeat for several).
        #[arg(long = "kind", value_parser = operator::parse_kind)]
        kinds: Vec<pilot_center::proto::EventKind>,
        /// Resume after this sequence number (a listing's cursor, or the
        /// last `seq` seen): no gap, no duplicate.
        #[arg(long)]
        after: Option<u64>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Make a damaged state directory usable: keep each log's valid prefix
    /// and move the rest aside (`*.damaged`). Run with the center stopped.
    RepairState {
        /// The state directory (`center.state_dir`).
        dir: PathBuf,
    },
}

/// Where the running center is, and how to talk to it.
#[derive(Debug, clap::Args)]
struct Remote {
    /// The center's gRPC listener.
    #[arg(long, default_value = "127.0.0.1:9444")]
    addr: String,
    /// An admin token, when the center has auth on.
    #[arg(long, env = "PILOT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// JSON instead of tables (one object per line for `watch`).
    #[arg(long)]
    json: bool,
}

/// Runs a subcommand.
fn subcommand(command: Command) -> anyhow::Result<()> {
    if let Command::RepairState { dir } = &command {
        let moved = pilot_center::store::file::repair(dir)
            .with_context(|| format!("cannot repair {}", dir.display()))?;
        if moved.is_empty() {
            println!("{}: nothing damaged", dir.display());
        }
        for path in moved {
            println!("moved aside: {}", path.display());
        }
        return Ok(());
    }
    let Command::Token {
        role,
        rooms,
        ttl,
        sub,
        config,
    } = command
    else {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the runtime")?;
        return runtime.block_on(operate(command));
    };
    let config = Config::load(&config).context("bad configuration")?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("clock before 1970")?;
    let claims = Claims {
        sub,
        role,
        rooms,
        users: Vec::new(),
        exp: (now + *ttl).as_secs(),
        incarnation: String::new(),
    };
    println!("{}", auth::mint(&config.auth.hs256_secret, &claims)?);
    Ok(())
}

/// Runs an operator command against a running center.
async fn operate(command: Command) -> anyhow::Result<()> {
    use std::io::Write as _;
    let remote = match &command {
        Command::Token { .. } | Command::RepairState { .. } => {
            anyhow::bail!("not an operator command")
        }
        Command::Rooms(r)
        | Command::Sessions(r)
        | Command::Msus(r)
        | Command::Relays(r)
        | Command::Playbacks(r) => r,
        Command::Room { remote, .. }
        | Command::Kick { remote, .. }
        | Command::Close { remote, .. }
        | Command::Say { remote, .. }
        | Command::Record { remote, .. }
        | Command::StopRecording { remote, .. }
        | Command::Recordings { remote, .. }
        | Command::DeleteRecording { remote, .. }
        | Command::Play { remote, .. }
        | Command::StopPlayback { remote, .. }
        | Command::Watch { remote, .. } => remote,
    };
    let json = remote.json;
    let mut op = Operator::connect(&remote.addr, remote.token.as_deref()).await?;
    let text = match &command {
        Command::Token { .. } | Command::RepairState { .. } => String::new(),
        Command::Rooms(_) => view::show_rooms(&op.rooms().await?, json),
        Command::Room { room_id, .. } => view::show_room(&op.room(room_id).await?, json),
        Command::Sessions(_) => view::show_sessions(&op.sessions().await?, json),
        Command::Msus(_) => view::show_msus(&op.msus().await?, json),
        Command::Relays(_) => view::show_relays(&op.relays().await?, json),
        Command::Kick {
            room_id, user_id, ..
        } => {
            let n = op.kick(room_id, user_id).await?;
            format!("removed {user_id} from {room_id}; {n} sessions told\n")
        }
        Command::Close { room_id, .. } => {
            let n = op.close(room_id).await?;
            format!("closed {room_id}; {n} users removed\n")
        }
        Command::Say { room_id, text, .. } => {
            let n = op.say(room_id, text).await?;
            format!("said in {room_id}; {n} sessions reached\n")
        }
        Command::Record { room_id, id, .. } => {
            let r = op
                .record(room_id, id.as_deref().unwrap_or_default())
                .await?;
            view::show_recordings(&[r], json)
        }
        Command::StopRecording { room_id, .. } => {
            view::show_recordings(&[op.stop_recording(room_id).await?], json)
        }
        Command::Recordings { room_id, .. } => {
            view::show_recordings(&op.recordings(room_id).await?, json)
        }
        Command::DeleteRecording { recording_id, .. } => {
            if op.delete_recording(recording_id).await? {
                format!("deleted {recording_id}; its MSU removes the files\n")
            } else {
                format!(
                    "deleted {recording_id}; its MSU is not connected: the files stay on its disk\n"
                )
            }
        }
        Command::Play {
            recording_id,
            room_id,
            user_id,
            source_user_id,
            looped,
            ..
        } => {
            let p = op
                .play(pilot_center::proto::StartPlaybackRequest {
                    recording_id: recording_id.clone(),
                    source_user_id: source_user_id.clone(),
                    room_id: room_id.clone(),
                    user_id: user_id.clone(),
                    r#loop: *looped,
                    playback_id: String::new(),
                })
                .await?;
            view::show_playbacks(&[p], json)
        }
        Command::StopPlayback { playback_id, .. } => {
            op.stop_playback(playback_id).await?;
            format!("stopped {playback_id}\n")
        }
        Command::Playbacks(_) => view::show_playbacks(&op.playbacks().await?, json),
        Command::Watch {
            rooms,
            kinds,
            after,
            ..
        } => {
            let mut feed = op.watch(rooms.clone(), kinds.clone(), *after).await?;
            let mut out = std::io::stdout();
            loop {
                let event = tokio::select! {
                    e = feed.message() => e.map_err(operator::OperatorError::from)?,
                    r = tokio::signal::ctrl_c() => { r?; None }
                };
                let Some(event) = event else { break };
                out.write_all(view::show_event(&event, json).as_bytes())?;
                out.flush()?;
            }
            String::new()
        }
    };
    std::io::stdout().write_all(text.as_bytes())?;
    Ok(())
}

fn parse_level(s: &str) -> Result<String, String> {
    telemetry::level_directive(s)
        .map(|_| s.to_owned())
        .map_err(|e| e.to_string())
}

// The center's allocator (docs/PERFORMANCE.md, "Memory after a crowd",
// has the measurements that chose it and its settings).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read when it starts:
/// - a background thread purges freed pages a second after they were last
///   used (`dirty_decay_ms`), straight back to the OS (`muzzy_decay_ms: 0`:
///   no lazy `MADV_FREE` stage, whose pages would still count as resident),
///   so what a crowd freed goes back while the center idles, with no call
///   from the center;
/// - per-thread caches only on the runtime's workers, which empty theirs
///   when they run out of work, at most every 20 ms ([`worker_parks`]):
///   without a cache every allocation takes an arena's lock (a fifth of
///   the center's CPU in a busy room); with caches everywhere, idle threads
///   would keep the crowd's last blocks, each pinning a page (24 MB
///   resident after a crowd against 16 MB);
/// - a setting jemalloc does not know stops the start (`abort_conf`).
#[cfg(feature = "jemalloc")]
#[allow(unsafe_code)] // jemalloc finds its settings by this symbol's name
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static JEMALLOC_CONF: &[u8; 89] =
    b"background_thread:true,tcache:false,dirty_decay_ms:1000,muzzy_decay_ms:0,abort_conf:true\0";

/// Called by a runtime worker that runs out of work: it gives its cached
/// blocks back to jemalloc's arenas (unless it did less than 20 ms ago),
/// and has a cache from its first idle moment on (the settings give other
/// threads none).
#[cfg(feature = "jemalloc")]
#[allow(unsafe_code)] // mallctl calls: jemalloc's control interface is C only
fn worker_parks() {
    thread_local! {
        static CACHED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if !CACHED.replace(true) {
        let mut on = true;
        // SAFETY: `thread.tcache.enabled` takes a bool: `newp` points to
        // one that outlives the call and `newlen` is its size; nothing is
        // read back (null `oldp`/`oldlenp`). The name is a C string.
        unsafe {
            tikv_jemalloc_sys::mallctl(
                c"thread.tcache.enabled".as_ptr(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                (&raw mut on).cast(),
                std::mem::size_of::<bool>(),
            );
        }
    }
    // A worker on a busy loopback parks thousands of times a second; a
    // flush on each took 3-4 % of the center's CPU (the flush, then the
    // refill after it). Idle moments closer than this keep the cache.
    const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(20);
    thread_local! {
        static LAST_FLUSH: std::cell::Cell<Option<std::time::Instant>> = const { std::cell::Cell::new(None) };
    }
    let now = std::time::Instant::now();
    if LAST_FLUSH
        .get()
        .is_some_and(|at| now.duration_since(at) < FLUSH_EVERY)
    {
        return;
    }
    LAST_FLUSH.set(Some(now));
    // SAFETY: `thread.tcache.flush` reads and writes nothing: every pointer
    // is null and the length 0, as it requires. It fails (EFAULT)
    // harmlessly for a thread without a cache.
    unsafe {
        tikv_jemalloc_sys::mallctl(
            c"thread.tcache.flush".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        );
    }
}

fn main() -> std::process::ExitCode {
    match start() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line an operator can act on, with every cause.
            eprintln!("pilot-center: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn start() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(command) = cli.command {
        return subcommand(command);
    }
    let config_path = cli.config.context("a configuration file is required")?;
    let _log = telemetry::init(&LogOptions {
        level: cli.log_level.clone(),
        verbose: cli.verbose,
        file: cli.log_file.clone(),
        no_console: cli.no_console,
        json: cli.log_json,
    })?;
    let config = Config::load(&config_path).context("bad configuration")?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    // A worker with nothing to do gives its allocation cache back (see
    // JEMALLOC_CONF): busy workers keep theirs, idle ones pin nothing.
    #[cfg(feature = "jemalloc")]
    runtime.on_thread_park(worker_parks);
    let runtime = runtime.build().context("cannot start the runtime")?;
    runtime.block_on(run(config))
}

async fn run(config: Config) -> anyhow::Result<()> {
    // Listened for before anything starts: a SIGTERM that comes while the
    // center starts (loading a large state, say) stops it gracefully once
    // it has started, instead of killing it on the spot.
    let mut stop = StopSignals::listen()?;
    let server = Server::start(&config).await?;
    tracing::info!(url = %server.ws_url(), grpc = ?server.grpc_addr(), "pilot center started");
    stop.wait().await;
    let grace = Duration::from_secs(config.center.shutdown_grace_secs);
    tracing::info!(?grace, "shutting down");
    if server.shutdown(grace).await {
        tracing::info!("stopped");
    } else {
        tracing::warn!("grace period over: exiting with sessions still open");
    }
    Ok(())
}

/// SIGTERM and SIGINT, the signals that stop the center gracefully.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Starts listening: from now on neither signal kills the process.
    fn listen() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
        })
    }

    /// Waits for either.
    async fn wait(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
