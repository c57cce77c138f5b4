//! `rtt`: closed-loop echo requests over many sessions.

use super::{Ctx, micros, request};
use crate::conn::{self};
use crate::report::{self, Latency, Report};
use std::time::{Duration, Instant};

/// `rtt`: C sessions doing closed-loop `echo` requests for `seconds`.
pub async fn rtt(ctx: &Ctx, sessions: usize, seconds: f64) -> anyhow::Result<Report> {
    let mut conns = Vec::new();
    for _ in 0..sessions {
        conns.push(conn::connect(&ctx.target, None).await?);
    }
    let before = ctx.usage();
    let bar = ctx.bar((seconds * 10.0) as u64, "rtt");
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let mut tasks = tokio::task::JoinSet::new();
    for mut ws in conns {
        tasks.spawn(async move {
            let mut h = report::histogram();
            let mut id = 0u64;
            while Instant::now() < deadline {
                id += 1;
                let t = Instant::now();
                request(&mut ws, id, "echo", r#"{"ts":1,"index":1}"#).await?;
                let _ = h.record(micros(t.elapsed()));
            }
            anyhow::Ok(h)
        });
    }
    let ticker = tokio::spawn({
        let bar = bar.clone();
        async move {
            while Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
                bar.inc(1);
            }
        }
    });
    let mut all = report::histogram();
    let mut errors = Vec::new();
    while let Some(r) = tasks.join_next().await {
        match r? {
            Ok(h) => all.add(&h).unwrap_or_default(),
            Err(e) => errors.push(e.to_string()),
        }
    }
    ticker.abort();
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let mut rep = ctx.report("rtt", secs);
    rep.throughput
        .push(("echo requests".into(), all.len() as f64 / secs));
    rep.latency.push(Latency::of("echo", &all));
    rep.figures.push(("sessions".into(), sessions as f64));
    rep.errors = errors;
    rep.server_before = before;
    rep.server_after = ctx.usage();
    Ok(rep)
}
