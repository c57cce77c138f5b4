//! `fanout`: rooms of `sessions` sessions, one sender in each, every other
//! session of the room receives.

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

/// How a fanout runs.
pub struct FanoutSettings {
    /// Sessions per room (one sends, the others receive).
    pub sessions: usize,
    /// Rooms, each with its own sender.
    pub rooms: usize,
    /// Messages per second per sender (0: as fast as the room's slowest
    /// receiver allows, with `window` in flight).
    pub rate: u64,
    /// Seconds of load.
    pub seconds: f64,
    /// Messages in flight per room.
    pub window: u64,
}

/// `fanout`: `rooms` rooms of `sessions` sessions, one sender in each.
pub async fn fanout(ctx: &Ctx, settings: FanoutSettings) -> anyhow::Result<Report> {
    let FanoutSettings {
        sessions,
        rooms,
        rate,
        seconds,
        window,
    } = settings;
    anyhow::ensure!(sessions >= 2, "fanout needs at least 2 sessions");
    anyhow::ensure!(rooms >= 1, "fanout needs at least 1 room");
    let run = std::process::id();
    let wss = open_joined(
        ctx,
        sessions * rooms,
        1,
        move |i| format!("fanout-{run}-{}", i / sessions),
        |i| format!("f{i}"),
    )
    .await?;
    let epoch = Instant::now();
    let receivers: Arc<Vec<Receiver>> = Arc::new(
        (0..sessions * rooms)
            .map(|_| Receiver {
                next: AtomicU64::new(0),
                hist: Mutex::new(report::histogram()),
                errors: Mutex::new(Vec::new()),
            })
            .collect(),
    );
    // A sender waits for its room's slowest receiver without spinning: a
    // receiver wakes it every `step` notifications (a spinning sender took
    // a core from the server it measures).
    let progress: Arc<Vec<tokio::sync::Notify>> =
        Arc::new((0..rooms).map(|_| tokio::sync::Notify::new()).collect());
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
                progress[i / sessions].notify_one();
            }
            let now = micros(epoch.elapsed());
            let _ = r.hist.lock().record(now.saturating_sub(t).max(1));
        })
    };
    let mut senders = Vec::with_capacity(rooms);
    let mut conns = Vec::with_capacity(sessions * rooms);
    for (i, ws) in wss.into_iter().enumerate() {
        let conn = Conn::spawn(ws, i, on_text.clone());
        if i % sessions == 0 {
            senders.push(conn);
        } else {
            conns.push(conn);
        }
    }
    // Let the join notifications settle before measuring.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = ctx.usage();
    let bar = ctx.bar((seconds * 10.0) as u64, "fanout");
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let mut loops = tokio::task::JoinSet::new();
    for (room, sender) in senders.into_iter().enumerate() {
        let (receivers, progress) = (receivers.clone(), progress.clone());
        loops.spawn(async move {
            let members = room * sessions + 1..(room + 1) * sessions;
            let min_progress = || {
                receivers[members.clone()]
                    .iter()
                    .map(|r| r.next.load(Ordering::Relaxed))
                    .min()
                    .unwrap_or(0)
            };
            let mut seq = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            let per_tick = rate.div_ceil(1000).max(1);
            while Instant::now() < deadline {
                if rate > 0 {
                    tick.tick().await;
                }
                for _ in 0..if rate > 0 { per_tick } else { 32 } {
                    let give_up =
                        tokio::time::Instant::from_std(deadline + Duration::from_secs(10));
                    while seq >= min_progress() + window {
                        let woken = progress[room].notified();
                        if seq < min_progress() + window {
                            break;
                        }
                        if tokio::time::timeout_at(give_up, woken).await.is_err() {
                            break;
                        }
                    }
                    let t = micros(epoch.elapsed());
                    sender.send(format!(
                        r#"{{"notification":true,"method":"textMessage","data":{{"roomId":"fanout-{run}-{room}","userId":"f{first}","userName":"f{first}","message":"{seq} {t}"}}}}"#,
                        first = room * sessions
                    ));
                    seq += 1;
                }
                if rate == 0 {
                    tokio::task::yield_now().await;
                }
            }
            (room, seq, sender)
        });
    }
    let mut sent = vec![0u64; rooms];
    let mut _senders = Vec::with_capacity(rooms);
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            done = loops.join_next() => match done {
                Some(r) => {
                    let (room, seq, sender) = r?;
                    sent[room] = seq;
                    _senders.push(sender);
                }
                None => break,
            },
            _ = ticker.tick() => bar.inc(1),
        }
    }
    let behind = || {
        (0..sessions * rooms)
            .filter(|i| i % sessions != 0)
            .any(|i| receivers[i].next.load(Ordering::Relaxed) < sent[i / sessions])
    };
    let wait_until = Instant::now() + Duration::from_secs(10);
    while behind() && Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let after = ctx.usage();
    let mut all = report::histogram();
    let mut errors = Vec::new();
    for (i, r) in receivers.iter().enumerate() {
        if i % sessions == 0 {
            continue;
        }
        all.add(&*r.hist.lock()).unwrap_or_default();
        errors.extend(r.errors.lock().drain(..).take(5));
        let got = r.next.load(Ordering::Relaxed);
        let want = sent[i / sessions];
        if got != want {
            errors.push(format!("session {i}: received {got} of {want}"));
        }
    }
    let delivered = all.len();
    let mut rep = ctx.report("fanout", secs);
    rep.throughput
        .push(("notifications delivered".into(), delivered as f64 / secs));
    rep.throughput.push((
        "messages sent".into(),
        sent.iter().sum::<u64>() as f64 / secs,
    ));
    rep.latency.push(Latency::of("send -> receive", &all));
    rep.figures
        .push(("sessions".into(), (sessions * rooms) as f64));
    rep.figures.push(("rooms".into(), rooms as f64));
    rep.errors = errors;
    rep.server_before = before;
    rep.server_after = after;
    Ok(rep)
}
