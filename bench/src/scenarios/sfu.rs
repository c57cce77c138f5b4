//! `sfu`: SFU sessions carrying many rooms through every kind of change.

use super::{Ctx, Incoming, micros, request};
use crate::conn::{self, Conn, OnText};
use crate::report::{self, Latency, Report};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

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
