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
        exp: (now + *ttl).as_secs(),
    };
    println!("{}", auth::mint(&config.auth.hs256_secret, &claims)?);
    Ok(())
}

/// Runs an operator command against a running center.
async fn operate(command: Command) -> anyhow::Result<()> {
    use std::io::Write as _;
    let remote = match &command {
        Command::Token { .. } => anyhow::bail!("not an operator command"),
        Command::Rooms(r) | Command::Sessions(r) | Command::Msus(r) => r,
        Command::Room { remote, .. }
        | Command::Kick { remote, .. }
        | Command::Close { remote, .. }
        | Command::Say { remote, .. }
        | Command::Watch { remote, .. } => remote,
    };
    let json = remote.json;
    let mut op = Operator::connect(&remote.addr, remote.token.as_deref()).await?;
    let text = match &command {
        Command::Token { .. } => String::new(),
        Command::Rooms(_) => view::show_rooms(&op.rooms().await?, json),
        Command::Room { room_id, .. } => view::show_room(&op.room(room_id).await?, json),
        Command::Sessions(_) => view::show_sessions(&op.sessions().await?, json),
        Command::Msus(_) => view::show_msus(&op.msus().await?, json),
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

/// Keeps glibc from handing freed heap back to the OS after every burst of
/// departures: measured with `pilot-bench sfu --rate 65000`, that trimming
/// (and faulting the pages back in on the next joins) caused occasional
/// 5–10 ms stalls in the p99; with a fixed mmap threshold and a 1 GiB trim
/// threshold the worst p99 of eight runs fell from 6.0 ms to 2.8 ms. Memory
/// is still reused; [`trim_after_crowds_leave`] gives it back once a crowd
/// of sessions has gone, instead of after every free.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn tune_allocator() {
    // SAFETY: mallopt only sets allocator parameters; it is called once,
    // before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}

/// Returns freed heap to the OS.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim_heap() {
    // SAFETY: malloc_trim only walks glibc's own arenas under their locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() {}

/// Gives freed heap back after a crowd leaves: checked every second (a
/// coarser sample misses short spikes), once sessions plus users have fallen
/// by a quarter (and at least 256) from their peak since the last trim *and*
/// held still for one check. Waiting for the
/// departures to settle matters: a trim in the middle of them frees little
/// (live blocks still pin the top of each arena) and resets the peak, so the
/// rest of the crowd would never trigger another. Users count because those
/// of closed sessions leave only when their reconnect grace ends. Rare by
/// design: trimming after every departure brought back the p99 stalls
/// [`tune_allocator`] removed.
async fn trim_after_crowds_leave(center: pilot_center::center::Center) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let (mut peak, mut last) = (0usize, 0usize);
    loop {
        tick.tick().await;
        let (sessions, _, users, _) = center.counts();
        let load = sessions + users;
        peak = peak.max(load);
        let settled = load == last;
        last = load;
        if settled && peak - load >= (peak / 4).max(256) {
            let started = std::time::Instant::now();
            // Off the runtime's workers: a trim of a large heap takes a while.
            let _ = tokio::task::spawn_blocking(trim_heap).await;
            tracing::info!(from = peak, to = load, took = ?started.elapsed(), "heap trimmed after sessions and users left");
            peak = load;
        }
    }
}

fn main() -> std::process::ExitCode {
    tune_allocator();
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
    let runtime = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
    runtime.block_on(run(config))
}

async fn run(config: Config) -> anyhow::Result<()> {
    let server = Server::start(&config).await?;
    tracing::info!(url = %server.ws_url(), grpc = ?server.grpc_addr(), "pilot center started");
    let trimmer = tokio::spawn(trim_after_crowds_leave(server.center().clone()));
    wait_for_signal().await?;
    trimmer.abort();
    let grace = Duration::from_secs(config.center.shutdown_grace_secs);
    tracing::info!(?grace, "shutting down");
    if server.shutdown(grace).await {
        tracing::info!("stopped");
    } else {
        tracing::warn!("grace period over: exiting with sessions still open");
    }
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot listen for SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}
