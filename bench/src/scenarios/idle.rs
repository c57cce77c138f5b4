//! `idle`: joined sessions held still, for the memory each costs.

use super::{Ctx, open_joined};
use crate::conn::{Conn, OnText};
use crate::report::Report;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `idle`: hold `sessions` joined sessions for `hold` seconds; report the
/// server's memory per session.
pub async fn idle(ctx: &Ctx, sessions: usize, sources: usize, hold: f64) -> anyhow::Result<Report> {
    let before = ctx.usage();
    let started = Instant::now();
    let wss = open_joined(
        ctx,
        sessions,
        sources,
        |i| format!("idle-{}", i / 8),
        |i| format!("i{i}"),
    )
    .await?;
    let connected = started.elapsed().as_secs_f64();
    // Keep every connection read, so pings are answered.
    let noop: OnText = Arc::new(|_, _| {});
    let conns: Vec<Conn> = wss
        .into_iter()
        .enumerate()
        .map(|(i, ws)| Conn::spawn(ws, i, noop.clone()))
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(hold)).await;
    let after = ctx.usage();
    let mut rep = ctx.report("idle", started.elapsed().as_secs_f64());
    rep.throughput.push((
        "connects (upgrade + join)".into(),
        sessions as f64 / connected,
    ));
    rep.figures
        .push(("sessions held".into(), conns.len() as f64));
    if let (Some(b), Some(a)) = (before, after) {
        let per = (a.rss_kib.saturating_sub(b.rss_kib)) as f64 / sessions as f64;
        rep.figures
            .push(("server RSS per session (KiB)".into(), per));
        rep.figures.push((
            "server CPU seconds while idle+connect".into(),
            a.cpu_seconds - b.cpu_seconds,
        ));
    }
    rep.server_before = before;
    rep.server_after = after;
    drop(conns);
    Ok(rep)
}
