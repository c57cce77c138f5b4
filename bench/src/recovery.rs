//! Scenarios around a lost connection (PROTOCOL.md §6): an SFU that drops
//! and comes back under its name, and the storm of `userReConnect` and
//! `push` it sends when its users return. Both check that nothing is lost.

use crate::conn::{self, Conn, OnText, Ws};
use crate::report::Report;
use crate::scenarios::{Ctx, Incoming, request};
use futures_util::SinkExt;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Per-user counts of what an observer heard, by method.
type Heard = Arc<Mutex<HashMap<String, HashMap<String, u32>>>>;

/// An observer's handler: counts every notification by user and method
/// (`pullRemoteStream` by its `bk` key).
fn counting(heard: &Heard) -> OnText {
    let heard = heard.clone();
    Arc::new(move |_, text| {
        let Ok(m) = serde_json::from_str::<Incoming<'_>>(text) else {
            return;
        };
        let (Some(method), Some(data)) = (m.method, m.data) else {
            return;
        };
        let who = match (data.user_id, data.bk) {
            (Some(u), _) => u.to_owned(),
            (None, Some(k)) => format!("bk{k}"),
            _ => return,
        };
        *heard
            .lock()
            .entry(who)
            .or_default()
            .entry(method.to_owned())
            .or_default() += 1;
    })
}

/// How many users have heard `method` at least once.
fn count(heard: &Heard, method: &str) -> usize {
    heard
        .lock()
        .values()
        .filter(|m| m.get(method).copied().unwrap_or(0) > 0)
        .count()
}

/// Waits (bounded) until `n` users have heard `method`.
async fn until(heard: &Heard, method: &str, n: usize, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while count(heard, method) < n {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{method}: {} of {n} within {limit:?}",
            count(heard, method)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}

/// Errors for users whose counts differ from `want` (method -> times).
fn check(heard: &Heard, users: &[String], want: &[(&str, u32)], errors: &mut Vec<String>) {
    let heard = heard.lock();
    for u in users {
        for (method, n) in want {
            let got = heard
                .get(u)
                .and_then(|m| m.get(*method))
                .copied()
                .unwrap_or(0);
            if got != *n {
                errors.push(format!("{u}: {method} {got} times, expected {n}"));
            }
        }
    }
}

/// An observer joined to every room as `obs-R` (on the target's `node`th
/// URL when given).
async fn observer(
    ctx: &Ctx,
    rooms: &[String],
    heard: &Heard,
    node: Option<usize>,
) -> anyhow::Result<Conn> {
    let mut ws = match node {
        Some(n) => {
            conn::connect_as(
                &ctx.target,
                n,
                None,
                &format!("bench-observer-{}", std::process::id()),
            )
            .await?
        }
        None => conn::connect(&ctx.target, None).await?,
    };
    for (i, room) in rooms.iter().enumerate() {
        let data = format!(r#"{{"roomId":"{room}","userId":"obs-{i}","userName":"obs"}}"#);
        request(&mut ws, i as u64 + 1, "join", &data).await?;
    }
    Ok(Conn::spawn(ws, 0, counting(heard)))
}

/// Sends `texts` as fast as the socket takes them, then waits for an echo:
/// when it answers, the center has applied them all.
async fn flood(ws: &mut Ws, texts: impl Iterator<Item = String>) -> anyhow::Result<()> {
    for text in texts {
        ws.feed(Message::Text(Utf8Bytes::from(text))).await?;
    }
    ws.flush().await?;
    request(ws, u64::MAX / 2, "echo", "{}").await
}

/// `reconnect`: an SFU carrying `users` users over `rooms` rooms, each with
/// a stream, vanishes (no close frame) and reconnects under its name. An
/// observer SFU in every room then pulls every stream; the figure is the
/// time from the reconnect until every pull has reached the SFU again. The
/// observer must hear one `userDisconnect` and one `userReConnect` per user
/// and no `userLeave`.
///
/// With `kill` (failover), the SFU's center (a cluster node, the first URL)
/// is killed with SIGKILL instead, the SFU reconnects at once to the second
/// URL, where the observer is, and the figure runs from the kill until every
/// pull has reached the SFU again (the survivors must first notice the
/// dead node by its lease).
pub async fn reconnect(
    ctx: &Ctx,
    rooms: usize,
    users: usize,
    kill: Option<u32>,
) -> anyhow::Result<Report> {
    let run = std::process::id();
    let room_ids: Vec<String> = (0..rooms).map(|r| format!("rc-{run}-{r}")).collect();
    let user_ids: Vec<String> = (0..users).map(|k| format!("rc{k}")).collect();
    let room_of = |k: usize| &room_ids[k % rooms];
    let heard: Heard = Arc::default();
    let obs = observer(ctx, &room_ids, &heard, kill.map(|_| 1)).await?;
    let before = ctx.usage();
    let name = format!("bench-reconnect-{run}");
    let mut sfu = conn::connect_as(&ctx.target, 0, None, &name).await?;
    let joins = user_ids.iter().enumerate().map(|(k, u)| {
        format!(
            r#"{{"request":true,"id":{k},"method":"join","data":{{"roomId":"{}","userId":"{u}","userName":"{u}"}}}}"#,
            room_of(k)
        )
    });
    let pushes = user_ids.iter().enumerate().map(|(k, u)| {
        format!(
            r#"{{"notification":true,"method":"push","data":{{"roomId":"{}","userId":"{u}","publishers":[{{"pusherId":"{u}-v","rtpParam":{{"ssrc":{k}}}}}]}}}}"#,
            room_of(k)
        )
    });
    flood(
        &mut sfu,
        joins.chain(pushes).collect::<Vec<_>>().into_iter(),
    )
    .await?;
    until(&heard, "newPusher", users, Duration::from_secs(60)).await?;
    let (started, announced, mut sfu) = if let Some(pid) = kill {
        // Its node dies; the SFU is back on another node at once.
        let status = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -KILL {pid} failed");
        let killed = Instant::now();
        drop(sfu);
        let sfu = conn::connect_as(&ctx.target, 1, None, &name).await?;
        until(&heard, "userDisconnect", users, Duration::from_secs(60)).await?;
        let announced = killed.elapsed();
        until(&heard, "userReConnect", users, Duration::from_secs(60)).await?;
        (killed, announced, sfu)
    } else {
        // The link drops without a close frame.
        drop(sfu);
        let dropped = Instant::now();
        until(&heard, "userDisconnect", users, Duration::from_secs(60)).await?;
        let announced = dropped.elapsed();
        // Back under the same name (to the next node, when there are
        // several): the center gives it its users back.
        let started = Instant::now();
        (
            started,
            announced,
            conn::connect_as(&ctx.target, 1, None, &name).await?,
        )
    };
    request(&mut sfu, 1, "echo", "{}").await?;
    let pulled: Heard = Arc::default();
    let _sfu = Conn::spawn(sfu, 1, counting(&pulled));
    for (k, u) in user_ids.iter().enumerate() {
        let pull = format!(
            r#"{{"notification":true,"method":"pullRemoteStream","data":{{"roomId":"{}","pusher_user_id":"{u}","udp_ip":"10.0.0.1","udp_port":{},"mediaType":"video","bk":{k}}}}}"#,
            room_of(k),
            10000 + k % 50000
        );
        obs.out.send(Message::Text(Utf8Bytes::from(pull)))?;
    }
    until(&pulled, "pullRemoteStream", users, Duration::from_secs(60)).await?;
    let routed = started.elapsed();
    until(&heard, "userReConnect", users, Duration::from_secs(60)).await?;
    // Anything late or twice would show in this extra moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut rep = ctx.report("reconnect", routed.as_secs_f64());
    check(
        &heard,
        &user_ids,
        &[
            ("newUser", 1),
            ("newPusher", 1),
            ("userDisconnect", 1),
            ("userReConnect", 1),
            ("userLeave", 0),
        ],
        &mut rep.errors,
    );
    let keys: Vec<String> = (0..users).map(|k| format!("bk{k}")).collect();
    check(&pulled, &keys, &[("pullRemoteStream", 1)], &mut rep.errors);
    rep.figures.push(("users carried".into(), users as f64));
    rep.figures.push((
        if kill.is_some() {
            "node killed -> every userDisconnect heard (ms)"
        } else {
            "drop -> every userDisconnect heard (ms)"
        }
        .into(),
        announced.as_secs_f64() * 1e3,
    ));
    rep.figures.push((
        if kill.is_some() {
            "node killed -> every pull routed again (ms)"
        } else {
            "reconnect -> every pull routed again (ms)"
        }
        .into(),
        routed.as_secs_f64() * 1e3,
    ));
    rep.server_before = before;
    rep.server_after = ctx.usage();
    Ok(rep)
}

/// `storm`: one SFU session sends `userReConnect` and `push` for `users`
/// users over `rooms` rooms as fast as it can (what a real SFU sends when
/// its users come back); an observer in every room must hear each once.
pub async fn storm(ctx: &Ctx, rooms: usize, users: usize) -> anyhow::Result<Report> {
    let run = std::process::id();
    let room_ids: Vec<String> = (0..rooms).map(|r| format!("st-{run}-{r}")).collect();
    let user_ids: Vec<String> = (0..users).map(|k| format!("st{k}")).collect();
    let heard: Heard = Arc::default();
    let _obs = observer(ctx, &room_ids, &heard, None).await?;
    let before = ctx.usage();
    let mut sfu = conn::connect(&ctx.target, None).await?;
    let texts = user_ids.iter().enumerate().flat_map(|(k, u)| {
        let room = &room_ids[k % rooms];
        [
            format!(
                r#"{{"notification":true,"method":"userReConnect","data":{{"roomId":"{room}","userId":"{u}","userName":"{u}"}}}}"#
            ),
            format!(
                r#"{{"notification":true,"method":"push","data":{{"roomId":"{room}","userId":"{u}","publishers":[{{"pusherId":"{u}-v","rtpParam":{{"ssrc":{k}}}}}]}}}}"#
            ),
        ]
    });
    let texts: Vec<String> = texts.collect();
    let started = Instant::now();
    flood(&mut sfu, texts.into_iter()).await?;
    let applied = started.elapsed();
    until(&heard, "newPusher", users, Duration::from_secs(60)).await?;
    until(&heard, "userReConnect", users, Duration::from_secs(60)).await?;
    let delivered = started.elapsed();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut rep = ctx.report("storm", delivered.as_secs_f64());
    check(
        &heard,
        &user_ids,
        &[("userReConnect", 1), ("newPusher", 1)],
        &mut rep.errors,
    );
    rep.throughput.push((
        "storm messages applied".into(),
        (2 * users) as f64 / applied.as_secs_f64(),
    ));
    rep.figures
        .push(("all applied (ms)".into(), applied.as_secs_f64() * 1e3));
    rep.figures.push((
        "all delivered to the observer (ms)".into(),
        delivered.as_secs_f64() * 1e3,
    ));
    rep.server_before = before;
    rep.server_after = ctx.usage();
    drop(sfu);
    Ok(rep)
}
