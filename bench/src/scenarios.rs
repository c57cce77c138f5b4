//! The load scenarios. Each one checks correctness while it loads: every
//! expected notification must arrive exactly once at each expected session,
//! nothing unexpected may arrive, and every request must be answered.

use crate::conn::{self, Conn, OnText, Target, Ws};
use crate::report::{self, Latency, Report, Usage};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// What every scenario needs.
#[derive(Clone)]
pub struct Ctx {
    /// The center (or relay) under load.
    pub target: Target,
    /// The server's pid, for /proc figures.
    pub server_pid: Option<u32>,
    /// Draw progress bars.
    pub progress: bool,
}

impl Ctx {
    pub(crate) fn bar(&self, len: u64, what: &str) -> ProgressBar {
        if !self.progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(len);
        if let Ok(style) =
            ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what.to_owned());
        bar
    }

    pub(crate) fn usage(&self) -> Option<Usage> {
        self.server_pid.and_then(report::usage)
    }

    pub(crate) fn report(&self, scenario: &str, seconds: f64) -> Report {
        Report {
            scenario: scenario.to_owned(),
            url: self.target.describe(),
            seconds,
            throughput: Vec::new(),
            latency: Vec::new(),
            figures: Vec::new(),
            errors: Vec::new(),
            server_before: None,
            server_after: None,
        }
    }
}

/// The fields of an incoming frame the scenarios look at.
#[derive(Deserialize)]
pub(crate) struct Incoming<'a> {
    #[serde(default)]
    request: bool,
    #[serde(default)]
    response: bool,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub(crate) method: Option<&'a str>,
    #[serde(borrow, default)]
    pub(crate) data: Option<Data<'a>>,
}

#[derive(Deserialize, Default)]
pub(crate) struct Data<'a> {
    /// Bench key: identifies the operation a notification belongs to.
    #[serde(default)]
    pub(crate) bk: Option<u64>,
    #[serde(borrow, default, rename = "userId")]
    pub(crate) user_id: Option<&'a str>,
    #[serde(borrow, default)]
    message: Option<&'a str>,
}

pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Sends a request on a bare connection and waits for the frame that
/// carries its id (a response, or the relay's echo of the request).
pub(crate) async fn request(ws: &mut Ws, id: u64, method: &str, data: &str) -> anyhow::Result<()> {
    let text = format!(r#"{{"request":true,"id":{id},"method":"{method}","data":{data}}}"#);
    ws.send(Message::Text(Utf8Bytes::from(text))).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| anyhow::anyhow!("no answer to {method} within 10 s"))?
            .ok_or_else(|| anyhow::anyhow!("connection closed during {method}"))??;
        if let Message::Text(t) = frame
            && let Ok(m) = serde_json::from_str::<Incoming<'_>>(&t)
            && m.id.is_some_and(|i| i.get() == id.to_string())
        {
            return Ok(());
        }
    }
}

/// Opens `n` connections, 64 at a time, each joined as `user(i)` to `room(i)`.
async fn open_joined(
    ctx: &Ctx,
    n: usize,
    sources: usize,
    room: impl Fn(usize) -> String + Send + Sync + 'static,
    user: impl Fn(usize) -> String + Send + Sync + 'static,
) -> anyhow::Result<Vec<Ws>> {
    let bar = ctx.bar(n as u64, "connect");
    let (room, user) = (Arc::new(room), Arc::new(user));
    let mut out: Vec<Option<Ws>> = (0..n).map(|_| None).collect();
    let mut start = 0;
    while start < n {
        let end = (start + 64).min(n);
        let mut batch = tokio::task::JoinSet::new();
        for i in start..end {
            let (target, room, user) = (ctx.target.clone(), room.clone(), user.clone());
            let source =
                (sources > 1).then(|| std::net::IpAddr::from([127, 0, 0, 1 + (i % sources) as u8]));
            batch.spawn(async move {
                let mut ws = conn::connect(&target, source).await?;
                let data = format!(
                    r#"{{"roomId":"{}","userId":"{}","userName":"{}"}}"#,
                    room(i),
                    user(i),
                    user(i)
                );
                request(&mut ws, 1, "join", &data).await?;
                anyhow::Ok((i, ws))
            });
        }
        while let Some(r) = batch.join_next().await {
            let (i, ws) = r??;
            out[i] = Some(ws);
            bar.inc(1);
        }
        start = end;
    }
    bar.finish_and_clear();
    Ok(out.into_iter().flatten().collect())
}

// ---------------------------------------------------------------------------
// rtt
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// fanout
// ---------------------------------------------------------------------------

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
    let on_text: OnText = {
        let receivers = receivers.clone();
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
            while seq >= min_progress() + window {
                tokio::task::yield_now().await;
                if Instant::now() >= deadline + Duration::from_secs(10) {
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

// ---------------------------------------------------------------------------
// sfu
// ---------------------------------------------------------------------------

/// Kinds of measured operations in the `sfu` scenario.
const KINDS: [&str; 9] = [
    "join (response)",
    "newUser",
    "newPusher",
    "pullRemoteStream",
    "textMessage",
    "userDisconnect",
    "userReConnect",
    "userLeave",
    "invite",
];

fn kind_of(method: &str) -> Option<usize> {
    KINDS.iter().position(|k| *k == method)
}

struct Pending {
    sent: Instant,
    /// Sessions (bit per index) still to receive the notification.
    remaining: u64,
    /// Still waiting for the response (requests only).
    awaiting_response: bool,
}

/// The `sfu` scenario's bookkeeping, shared by every reader.
struct Tracker {
    shards: Vec<Mutex<HashMap<u64, Pending>>>,
    hists: Vec<Mutex<Histogram<u64>>>,
    errors: Mutex<Vec<String>>,
    outstanding: AtomicI64,
    received: AtomicU64,
    sent: AtomicU64,
    invites: AtomicU64,
}

impl Tracker {
    fn new() -> Self {
        Self {
            shards: (0..32).map(|_| Mutex::new(HashMap::new())).collect(),
            hists: KINDS
                .iter()
                .map(|_| Mutex::new(report::histogram()))
                .collect(),
            errors: Mutex::new(Vec::new()),
            outstanding: AtomicI64::new(0),
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            invites: AtomicU64::new(0),
        }
    }

    fn error(&self, e: String) {
        let mut errors = self.errors.lock();
        if errors.len() < 1000 {
            errors.push(e);
        }
    }

    fn expect(&self, key: u64, remaining: u64, request: bool) {
        if remaining == 0 && !request {
            return;
        }
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        self.shards[(key % 32) as usize].lock().insert(
            key,
            Pending {
                sent: Instant::now(),
                remaining,
                awaiting_response: request,
            },
        );
    }

    /// One notification of `kind` for operation `key` reached session `at`.
    fn delivered(&self, key: u64, at: usize, kind: usize) {
        let mut shard = self.shards[(key % 32) as usize].lock();
        let Some(p) = shard.get_mut(&key) else {
            drop(shard);
            return self.error(format!(
                "unexpected {} (op {key}) at session {at}",
                KINDS[kind]
            ));
        };
        let bit = 1u64 << at;
        if p.remaining & bit == 0 {
            drop(shard);
            return self.error(format!(
                "{} (op {key}) at session {at}: duplicate or not for it",
                KINDS[kind]
            ));
        }
        p.remaining &= !bit;
        let latency = micros(p.sent.elapsed());
        let done = p.remaining == 0 && !p.awaiting_response;
        if done {
            shard.remove(&key);
        }
        drop(shard);
        if done {
            self.outstanding.fetch_sub(1, Ordering::Relaxed);
        }
        let _ = self.hists[kind].lock().record(latency);
    }

    fn answered(&self, key: u64, at: usize) {
        let mut shard = self.shards[(key % 32) as usize].lock();
        let Some(p) = shard.get_mut(&key).filter(|p| p.awaiting_response) else {
            drop(shard);
            return self.error(format!("unexpected response {key} at session {at}"));
        };
        p.awaiting_response = false;
        let latency = micros(p.sent.elapsed());
        let done = p.remaining == 0;
        if done {
            shard.remove(&key);
        }
        drop(shard);
        if done {
            self.outstanding.fetch_sub(1, Ordering::Relaxed);
        }
        let _ = self.hists[0].lock().record(latency);
    }

    fn on_text(&self, at: usize, text: &str, msu: &OnceLock<mpsc::UnboundedSender<Message>>) {
        self.received.fetch_add(1, Ordering::Relaxed);
        let m = match serde_json::from_str::<Incoming<'_>>(text) {
            Ok(m) => m,
            Err(e) => return self.error(format!("session {at}: unreadable frame: {e}")),
        };
        if m.request && m.method == Some("invite") {
            self.invites.fetch_add(1, Ordering::Relaxed);
            if let (Some(tx), Some(id)) = (msu.get(), m.id) {
                let reply = format!(
                    r#"{{"response":true,"id":{},"ok":true,"data":{{}}}}"#,
                    id.get()
                );
                self.sent.fetch_add(1, Ordering::Relaxed);
                let _ = tx.send(Message::Text(Utf8Bytes::from(reply)));
            }
            return;
        }
        if m.response {
            match m.id.and_then(|i| i.get().parse::<u64>().ok()) {
                Some(key) if key >= 1000 => self.answered(key, at),
                _ => {}
            }
            return;
        }
        let method = m.method.unwrap_or_default();
        let Some(kind) = kind_of(method) else {
            return self.error(format!("session {at}: unexpected {method}"));
        };
        match m.data.and_then(|d| d.bk) {
            Some(key) => self.delivered(key, at, kind),
            None => self.error(format!("session {at}: {method} without bench key")),
        }
    }
}

/// Settings of the `sfu` scenario.
#[derive(Debug, Clone, Copy)]
pub struct SfuSettings {
    /// SFU sessions.
    pub sessions: usize,
    /// Rooms.
    pub rooms: usize,
    /// Users per room (spread over distinct sessions).
    pub users: usize,
    /// Operations per second (0: as fast as `inflight` allows).
    pub rate: u64,
    /// Most operations awaiting their notifications at once.
    pub inflight: i64,
    /// How long a phase may wait for missing notifications; then the run
    /// stops (a lost delivery fails it already; waiting on adds nothing).
    pub phase_timeout: Duration,
    /// Only join (for the state-size measurement); keep the users.
    pub join_only: bool,
    /// Register an MSU that answers every `invite`.
    pub msu: bool,
}

/// `sfu`: sessions carrying the users of many rooms through a room's life.
pub async fn sfu(ctx: &Ctx, s: SfuSettings) -> anyhow::Result<Report> {
    anyhow::ensure!((2..=63).contains(&s.sessions), "sfu needs 2..=63 sessions");
    anyhow::ensure!(
        s.users >= 2 && s.users <= s.sessions,
        "users per room must be 2..=sessions"
    );
    let tracker = Arc::new(Tracker::new());
    let msu_tx: Arc<OnceLock<mpsc::UnboundedSender<Message>>> = Arc::new(OnceLock::new());
    let on_text: OnText = {
        let (tracker, msu_tx) = (tracker.clone(), msu_tx.clone());
        Arc::new(move |at, text| tracker.on_text(at, text, &msu_tx))
    };
    // Session 63 is the MSU; 0..sessions are SFUs.
    let _msu = if s.msu {
        let mut msu_ws = conn::connect(&ctx.target, None).await?;
        request(&mut msu_ws, 1, "register", r#"{"id":"bench-msu"}"#).await?;
        let msu = Conn::spawn(msu_ws, 63, on_text.clone());
        let _ = msu_tx.set(msu.out.clone());
        Some(msu)
    } else {
        None
    };
    let mut sfus = Vec::new();
    for i in 0..s.sessions {
        sfus.push(Conn::spawn(
            conn::connect(&ctx.target, None).await?,
            i,
            on_text.clone(),
        ));
    }
    let run = std::process::id();
    let sess = |r: usize, j: usize| (r * s.users + j) % s.sessions;
    let user = |r: usize, j: usize| format!("r{r}u{j}");
    let room = |r: usize| format!("b{run}-{r}");
    let mask_of = |r: usize, js: &mut dyn Iterator<Item = usize>, except: usize| {
        js.map(|j| sess(r, j))
            .filter(|x| *x != except)
            .fold(0u64, |m, x| m | (1 << x))
    };
    let rtp = |ssrc: u64, video: bool| {
        if video {
            format!(
                r#"{{"av_type":"video","codec":"H264","fmtp_param":"profile-level-id=42e01f;level-asymmetry-allowed=1;packetization-mode=1;","rtcp_features":["nack","pli","transport-cc"],"channel":0,"ssrc":{ssrc},"payload_type":96,"clock_rate":90000,"rtx_ssrc":{},"rtx_payload_type":97,"use_nack":true,"key_request":true,"mid_ext_id":1,"tcc_ext_id":3}}"#,
                ssrc + 1
            )
        } else {
            format!(
                r#"{{"av_type":"audio","codec":"opus","fmtp_param":"minptime=10;useinbandfec=1","rtcp_features":["transport-cc"],"channel":2,"ssrc":{ssrc},"payload_type":111,"clock_rate":48000,"use_nack":false,"key_request":false,"mid_ext_id":1,"tcc_ext_id":3}}"#
            )
        }
    };

    // Each phase: (label, per room: (sending session, text, key, expected recipients, is request)).
    type Op = (usize, String, u64, u64, bool);
    let mut key = 1000u64;
    let mut phases: Vec<(String, Vec<Op>)> = Vec::new();
    let mut next_key = || {
        key += 1;
        key
    };
    for j in 0..s.users {
        let ops = (0..s.rooms)
            .map(|r| {
                let k = next_key();
                let text = format!(
                    r#"{{"request":true,"id":{k},"method":"join","data":{{"roomId":"{}","userId":"{}","userName":"{}","bk":{k}}}}}"#,
                    room(r), user(r, j), user(r, j)
                );
                (sess(r, j), text, k, mask_of(r, &mut (0..j), sess(r, j)), true)
            })
            .collect();
        phases.push((format!("join u{j}"), ops));
    }
    if !s.join_only {
        let mut ops = Vec::new();
        for r in 0..s.rooms {
            for j in 0..2 {
                let k = next_key();
                let text = format!(
                    r#"{{"notification":true,"method":"push","data":{{"roomId":"{}","userId":"{}","userName":"{}","bk":{k},"publishers":[{{"pusherId":"{}-v","rtpParam":{}}},{{"pusherId":"{}-a","rtpParam":{}}}]}}}}"#,
                    room(r),
                    user(r, j),
                    user(r, j),
                    user(r, j),
                    rtp(k * 4, true),
                    user(r, j),
                    rtp(k * 4 + 2, false)
                );
                ops.push((
                    sess(r, j),
                    text,
                    k,
                    mask_of(r, &mut (0..s.users), sess(r, j)),
                    false,
                ));
            }
        }
        phases.push(("push".into(), ops));
        let mut ops = Vec::new();
        for r in 0..s.rooms {
            for (puller, pusher) in [(s.users - 1, 0), (s.users - 2, 1)] {
                let k = next_key();
                let text = format!(
                    r#"{{"notification":true,"method":"pullRemoteStream","data":{{"roomId":"{}","pusher_user_id":"{}","udp_ip":"10.0.0.{}","udp_port":{},"mediaType":"video","bk":{k},"pushInfo":{{"pusherId":"{}-v","rtpParam":{}}}}}}}"#,
                    room(r),
                    user(r, pusher),
                    puller % 250,
                    10000 + (k % 50000),
                    user(r, pusher),
                    rtp(k * 4, true)
                );
                ops.push((sess(r, puller), text, k, 1u64 << sess(r, pusher), false));
            }
        }
        phases.push(("pull".into(), ops));
        let simple = |method: &str,
                      j: usize,
                      extra: &str,
                      next_key: &mut dyn FnMut() -> u64|
         -> Vec<Op> {
            (0..s.rooms)
                .map(|r| {
                    let k = next_key();
                    let text = format!(
                        r#"{{"notification":true,"method":"{method}","data":{{"roomId":"{}","userId":"{}","userName":"{}","bk":{k}{extra}}}}}"#,
                        room(r), user(r, j), user(r, j)
                    );
                    (sess(r, j), text, k, mask_of(r, &mut (0..s.users), sess(r, j)), false)
                })
                .collect()
        };
        phases.push((
            "text".into(),
            simple(
                "textMessage",
                s.users - 1,
                r#","message":"hello everyone in the room""#,
                &mut next_key,
            ),
        ));
        phases.push((
            "disconnect".into(),
            simple("userDisconnect", 1, "", &mut next_key),
        ));
        phases.push((
            "reconnect".into(),
            simple("userReConnect", 1, "", &mut next_key),
        ));
        for j in 0..s.users {
            let ops = (0..s.rooms)
                .map(|r| {
                    let k = next_key();
                    let text = format!(
                        r#"{{"notification":true,"method":"userLeave","data":{{"roomId":"{}","userId":"{}","bk":{k}}}}}"#,
                        room(r), user(r, j)
                    );
                    (sess(r, j), text, k, mask_of(r, &mut (j + 1..s.users), sess(r, j)), false)
                })
                .collect();
            phases.push((format!("leave u{j}"), ops));
        }
    }

    let total_ops: usize = phases.iter().map(|(_, ops)| ops.len()).sum();
    let bar = ctx.bar(total_ops as u64, "sfu");
    let before = ctx.usage();
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    // Delay, not Burst: a stall (or the wait between phases) must not turn
    // into a burst of catch-up operations that would measure the bench's
    // own queueing instead of the center.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let per_tick = s.rate.div_ceil(1000).max(1);
    'phases: for (label, ops) in phases {
        tick.reset();
        for chunk in ops.chunks(per_tick as usize) {
            if s.rate > 0 {
                tick.tick().await;
            }
            for (at, text, k, mask, is_request) in chunk {
                let deadline = Instant::now() + s.phase_timeout;
                while tracker.outstanding.load(Ordering::Relaxed) >= s.inflight {
                    if Instant::now() > deadline {
                        tracker.error(format!(
                            "phase {label}: {} operations in flight got no notifications for {:?}",
                            tracker.outstanding.load(Ordering::Relaxed),
                            s.phase_timeout
                        ));
                        break 'phases;
                    }
                    tokio::task::yield_now().await;
                }
                tracker.expect(*k, *mask, *is_request);
                tracker.sent.fetch_add(1, Ordering::Relaxed);
                sfus[*at].send(text.clone());
            }
            bar.inc(chunk.len() as u64);
            if s.rate == 0 {
                tokio::task::yield_now().await;
            }
        }
        let deadline = Instant::now() + s.phase_timeout;
        while tracker.outstanding.load(Ordering::Relaxed) > 0 {
            if Instant::now() > deadline {
                tracker.error(format!(
                    "phase {label}: {} operations still missing notifications after {:?}",
                    tracker.outstanding.load(Ordering::Relaxed),
                    s.phase_timeout
                ));
                break 'phases;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    // Invites: one per non-audience join.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = ctx.usage();
    let invites = tracker.invites.load(Ordering::Relaxed);
    let mut rep = ctx.report(
        if s.join_only {
            "sfu (joins only)"
        } else {
            "sfu"
        },
        secs,
    );
    let (sent, received) = (
        tracker.sent.load(Ordering::Relaxed),
        tracker.received.load(Ordering::Relaxed),
    );
    rep.throughput.push((
        "protoo messages (in + out)".into(),
        (sent + received) as f64 / secs,
    ));
    rep.throughput
        .push(("operations".into(), total_ops as f64 / secs));
    for (i, kind) in KINDS.iter().enumerate() {
        let h = tracker.hists[i].lock();
        if !h.is_empty() {
            rep.latency.push(Latency::of(kind, &h));
        }
    }
    rep.figures.push(("sessions".into(), s.sessions as f64));
    rep.figures.push(("rooms".into(), s.rooms as f64));
    rep.figures
        .push(("users".into(), (s.rooms * s.users) as f64));
    rep.figures
        .push(("invites answered".into(), invites as f64));
    rep.errors = tracker.errors.lock().clone();
    let want_invites = if s.msu { (s.rooms * s.users) as u64 } else { 0 };
    if invites != want_invites {
        rep.errors
            .push(format!("{invites} invites for {want_invites} joins"));
    }
    rep.server_before = before;
    rep.server_after = after;
    Ok(rep)
}

// ---------------------------------------------------------------------------
// idle
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// churn
// ---------------------------------------------------------------------------

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
