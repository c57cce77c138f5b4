//! Logging: console and/or a daily-rotated file, plain or JSON lines.

use std::path::Path;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

/// How to log.
#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    /// DEBUG, INFO, WARNING, ERROR or CRITICAL (any case); `None`: INFO.
    pub level: Option<String>,
    /// Each `-v` lowers the threshold by one step (INFO -> DEBUG -> TRACE).
    pub verbose: u8,
    /// Also write to this file, rotated daily (`PATH.YYYY-MM-DD`).
    pub file: Option<std::path::PathBuf>,
    /// Do not write to the console.
    pub no_console: bool,
    /// One JSON object per line.
    pub json: bool,
}

/// A log level name that is not one of the accepted ones.
#[derive(Debug, thiserror::Error)]
#[error("unknown log level `{0}` (use DEBUG, INFO, WARNING, ERROR or CRITICAL)")]
pub struct BadLevel(String);

/// The `tracing` directive for a level name (Python's names, any case).
pub fn level_directive(name: &str) -> Result<&'static str, BadLevel> {
    Ok(match name.to_ascii_uppercase().as_str() {
        "TRACE" => "trace",
        "DEBUG" => "debug",
        "INFO" => "info",
        "WARNING" | "WARN" => "warn",
        "ERROR" | "CRITICAL" => "error",
        _ => return Err(BadLevel(name.to_owned())),
    })
}

/// Keeps the file writer flushing; drop it last.
pub struct LogGuard(#[allow(dead_code)] Option<tracing_appender::non_blocking::WorkerGuard>);

/// Installs the global subscriber.
pub fn init(options: &LogOptions) -> Result<LogGuard, BadLevel> {
    const STEPS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];
    let base = level_directive(options.level.as_deref().unwrap_or("INFO"))?;
    let index = STEPS.iter().position(|s| *s == base).unwrap_or(2);
    let level = STEPS[(index + usize::from(options.verbose)).min(STEPS.len() - 1)];
    // RUST_LOG, when set, refines per module (e.g. `pilot_center=debug,h2=info`).
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));

    let mut guard = None;
    let writer = match (&options.file, options.no_console) {
        (Some(path), no_console) => {
            let dir = path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let name = path.file_name().map_or_else(
                || "pilot-center.log".into(),
                |n| n.to_string_lossy().into_owned(),
            );
            let (file, g) =
                tracing_appender::non_blocking(tracing_appender::rolling::daily(dir, name));
            guard = Some(g);
            if no_console {
                BoxMakeWriter::new(file)
            } else {
                use tracing_subscriber::fmt::writer::MakeWriterExt;
                BoxMakeWriter::new(file.and(std::io::stderr))
            }
        }
        (None, true) => BoxMakeWriter::new(std::io::sink),
        (None, false) => BoxMakeWriter::new(std::io::stderr),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let result = if options.json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    // Already installed (e.g. in tests): keep the first one.
    drop(result);
    Ok(LogGuard(guard))
}

/// A debug span for one request of a session;
/// room and user ids are recorded once the command is known.
pub fn command_span(method: &str) -> tracing::Span {
    tracing::debug_span!(
        "request",
        method = %method,
        room.id = tracing::field::Empty,
        user.id = tracing::field::Empty
    )
}

/// A span for one notification from a peer, like [`command_span`].
pub fn notification_span(method: &str) -> tracing::Span {
    tracing::debug_span!(
        "notification",
        method = %method,
        room.id = tracing::field::Empty,
        user.id = tracing::field::Empty
    )
}

/// Records the room and user of `cmd` on a [`command_span`] or
/// [`notification_span`].
pub fn record_command_ids(span: &tracing::Span, cmd: &crate::proto::Command) {
    let (room, user) = crate::translate::command_ids(cmd);
    if !room.is_empty() {
        span.record("room.id", room);
    }
    if !user.is_empty() {
        span.record("user.id", user);
    }
}
