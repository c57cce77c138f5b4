//! `fanout`: one room, one sender, every other session receives.

use super::{Ctx, Incoming, micros, open_joined};
use crate::conn::{Conn, OnText};
use crate::report::{self, Latency, Report};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

struct Receiver {
    next: AtomicU64,
    hist: Mutex<Histogram<u64>>,
    errors: Mutex<Vec<String>>,
}

/// `fanout`: one room, `sessions` sessions, one sender at `rate` messages/s
/// (0: as fast as the slowest receiver allows, with `window` in flight).
pub async fn fanout(
    ctx: &Ctx,
    sessions: usize,
    rate: u64,
    seconds: f64,
    window: u64,
) -> anyhow::Result<Report> {
    anyhow::ensure!(sessions >= 2, "fanout needs at least 2 sessions");
    let run = std::process::id();
    let mut wss = open_joined(
        ctx,
        sessions,
        1,
        move |_| format!("fanout-{run}"),
        |i| format!("f{i}"),
    )
    .await?;
    let epoch = Instant::now();
    let receivers: Arc<Vec<Receiver>> = Arc::new(
        (0..sessions)
            .map(|_| Receiver {
                next: AtomicU64::new(0),
                hist: Mutex::new(report::histogram()),
                errors: Mutex::new(Vec::new()),
            })
            .collect(),
    );
    // The sender waits for the slowest receiver without spinning: a
    // receiver wakes it every `step` notifications (a spinning sender took
    // a core from the server it measures).
    let progress = Arc::new(tokio::sync::Notify::new());
    let step = window.clamp(1, 16);
    let on_text: OnText = {
        let receivers = receivers.clone();
        let progress = progress.clone();
        Arc::new(move |i, text| {
            let Ok(m) = serde_json::from_str::<Incoming<'_>>(text) else {
                return;
            };
            if m.method != Some("textMessage") {
                return;
            }
            let r = &receivers[i];
            let Some((seq, t)) = m
                .data
                .and_then(|d| d.message)
                .and_then(|s| s.split_once(' '))
            else {
                r.errors
                    .lock()
                    .push(format!("session {i}: textMessage without a sequence"));
                return;
            };
            let (Ok(seq), Ok(t)) = (seq.parse::<u64>(), t.parse::<u64>()) else {
                return;
            };
            let want = r.next.load(Ordering::Relaxed);
            if seq != want {
                r.errors.lock().push(format!(
                    "session {i}: got #{seq}, expected #{want} (loss or duplicate)"
                ));
            }
            r.next.store(seq + 1, Ordering::Relaxed);
            if (seq + 1) % step == 0 {
                progress.notify_one();
            }
            let now = micros(epoch.elapsed());
            let _ = r.hist.lock().record(now.saturating_sub(t).max(1));
        })
    };
    let sender_ws = wss.remove(0);
    let sender = Conn::spawn(sender_ws, 0, on_text.clone());
    let _conns: Vec<Conn> = wss
        .into_iter()
        .enumerate()
        .map(|(k, ws)| Conn::spawn(ws, k + 1, on_text.clone()))
        .collect();
    // Let the join notifications settle before measuring.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = ctx.usage();
    let bar = ctx.bar((seconds * 10.0) as u64, "fanout");
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let min_progress = || {
        receivers[1..]
            .iter()
            .map(|r| r.next.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
    };
    let mut seq = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let per_tick = rate.div_ceil(1000).max(1);
    let mut last_bar = Instant::now();
    while Instant::now() < deadline {
        if rate > 0 {
            tick.tick().await;
        }
        for _ in 0..if rate > 0 { per_tick } else { 32 } {
            let give_up = tokio::time::Instant::from_std(deadline + Duration::from_secs(10));
            while seq >= min_progress() + window {
                let woken = progress.notified();
                if seq < min_progress() + window {
                    break;
                }
                if tokio::time::timeout_at(give_up, woken).await.is_err() {
                    break;
                }
            }
            let t = micros(epoch.elapsed());
            sender.send(format!(
                r#"{{"notification":true,"method":"textMessage","data":{{"roomId":"fanout-{run}","userId":"f0","userName":"f0","message":"{seq} {t}"}}}}"#
            ));
            seq += 1;
        }
        if rate == 0 {
            tokio::task::yield_now().await;
        }
        if last_bar.elapsed() >= Duration::from_millis(100) {
            bar.inc(1);
            last_bar = Instant::now();
        }
    }
    let sent_at_end = seq;
    let wait_until = Instant::now() + Duration::from_secs(10);
    while min_progress() < sent_at_end && Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let after = ctx.usage();
    let mut all = report::histogram();
    let mut errors = Vec::new();
    for (i, r) in receivers.iter().enumerate().skip(1) {
        all.add(&*r.hist.lock()).unwrap_or_default();
        errors.extend(r.errors.lock().drain(..).take(5));
        let got = r.next.load(Ordering::Relaxed);
        if got != sent_at_end {
            errors.push(format!("session {i}: received {got} of {sent_at_end}"));
        }
    }
    let delivered = all.len();
    let mut rep = ctx.report("fanout", secs);
    rep.throughput
        .push(("notifications delivered".into(), delivered as f64 / secs));
    rep.throughput
        .push(("messages sent".into(), sent_at_end as f64 / secs));
    rep.latency.push(Latency::of("send -> receive", &all));
    rep.figures.push(("sessions".into(), sessions as f64));
    rep.errors = errors;
    rep.server_before = before;
    rep.server_after = after;
    Ok(rep)
}
