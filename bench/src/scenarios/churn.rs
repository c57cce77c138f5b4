//! `churn`: sessions that vanish without a close frame.

use super::{Ctx, Incoming, micros, open_joined, request};
use crate::conn::{self, Conn, OnText};
use crate::report::{self, Latency, Report};
use futures_util::SinkExt;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// `churn`: sessions connect, join, push, and vanish without a close frame
/// at `rate` per second for `seconds`; observers check that every vanished
/// user is announced exactly once with each of newUser, newPusher and
/// userDisconnect.
pub async fn churn(ctx: &Ctx, rate: u64, seconds: f64, rooms: usize) -> anyhow::Result<Report> {
    let run = std::process::id();
    // (observer room, user) -> times seen: newUser, newPusher, userDisconnect.
    type Seen = HashMap<(usize, String), [u32; 3]>;
    let counts: Arc<Mutex<Seen>> = Arc::default();
    let gone_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let disc = Arc::new(Mutex::new(report::histogram()));
    let on_text: OnText = {
        let (counts, gone_at, disc) = (counts.clone(), gone_at.clone(), disc.clone());
        Arc::new(move |room, text| {
            let Ok(m) = serde_json::from_str::<Incoming<'_>>(text) else {
                return;
            };
            let slot = match m.method {
                Some("newUser") => 0,
                Some("newPusher") => 1,
                Some("userDisconnect") => 2,
                _ => return,
            };
            let Some(user) = m.data.and_then(|d| d.user_id) else {
                return;
            };
            if slot == 2
                && let Some(t) = gone_at.lock().get(user)
            {
                let _ = disc.lock().record(micros(t.elapsed()));
            }
            counts.lock().entry((room, user.to_owned())).or_default()[slot] += 1;
        })
    };
    let observers = open_joined(
        ctx,
        rooms,
        1,
        move |i| format!("churn-{run}-{i}"),
        |i| format!("obs{i}"),
    )
    .await?;
    let _observers: Vec<Conn> = observers
        .into_iter()
        .enumerate()
        .map(|(i, ws)| Conn::spawn(ws, i, on_text.clone()))
        .collect();
    let before = ctx.usage();
    let join_hist = Arc::new(Mutex::new(report::histogram()));
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let bar = ctx.bar((rate as f64 * seconds) as u64, "churn");
    let started = Instant::now();
    let total = (rate as f64 * seconds) as usize;
    let mut tasks = tokio::task::JoinSet::new();
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let mut next = tokio::time::Instant::now();
    for i in 0..total {
        tokio::time::sleep_until(next).await;
        next += interval;
        let (target, join_hist, errors, gone_at) = (
            ctx.target.clone(),
            join_hist.clone(),
            errors.clone(),
            gone_at.clone(),
        );
        tasks.spawn(async move {
            let room = format!("churn-{run}-{}", i % rooms);
            let user = format!("c{i}");
            let t = Instant::now();
            let result = async {
                let mut ws = conn::connect(&target, None).await?;
                request(&mut ws, 1, "join", &format!(r#"{{"roomId":"{room}","userId":"{user}","userName":"{user}"}}"#)).await?;
                let _ = join_hist.lock().record(micros(t.elapsed()));
                let push = format!(
                    r#"{{"notification":true,"method":"push","data":{{"roomId":"{room}","userId":"{user}","publishers":[{{"pusherId":"v","rtpParam":{{"ssrc":{i}}}}}]}}}}"#
                );
                ws.send(Message::Text(Utf8Bytes::from(push))).await?;
                // An echo round trip proves the push was handled before we vanish.
                request(&mut ws, 2, "echo", "{}").await?;
                gone_at.lock().insert(user.clone(), Instant::now());
                // Vanish: drop the socket, no close frame.
                drop(ws);
                anyhow::Ok(())
            }
            .await;
            if let Err(e) = result {
                errors.lock().push(format!("{user}: {e}"));
            }
        });
        bar.inc(1);
    }
    while tasks.join_next().await.is_some() {}
    let secs = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let deadline = Instant::now() + Duration::from_secs(10);
    let complete = |c: &Seen| {
        (0..total).all(|i| {
            c.get(&(i % rooms, format!("c{i}")))
                .is_some_and(|x| x[2] >= 1)
        })
    };
    while !complete(&counts.lock()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = ctx.usage();
    let mut errors = errors.lock().clone();
    let counts = counts.lock();
    for i in 0..total {
        let c = counts
            .get(&(i % rooms, format!("c{i}")))
            .copied()
            .unwrap_or_default();
        if c != [1, 1, 1] {
            errors.push(format!(
                "c{i}: newUser/newPusher/userDisconnect seen {c:?} times, expected once each"
            ));
        }
    }
    let mut rep = ctx.report("churn", secs);
    rep.throughput
        .push(("sessions churned".into(), total as f64 / secs));
    rep.latency
        .push(Latency::of("connect + join", &join_hist.lock()));
    rep.latency
        .push(Latency::of("drop -> userDisconnect", &disc.lock()));
    rep.errors = errors;
    rep.server_before = before;
    rep.server_after = after;
    Ok(rep)
}
