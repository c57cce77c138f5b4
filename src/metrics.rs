//! Prometheus metrics. Counters are bumped where things happen; gauges of
//! state (sessions, rooms, users, MSUs, queue depths) are read from the
//! center when `/metrics` is scraped, so they can never drift.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label: a protoo method (unknown names are folded into `other`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    /// The method.
    pub method: &'static str,
}

/// Label: a protoo error code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// The code.
    pub code: u16,
}

/// Label: a transport or a kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// The kind.
    pub kind: &'static str,
}

/// Labels: what was dropped and why.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabel {
    /// `pullRemoteStream` or `textMessage`.
    pub method: &'static str,
    /// `room_not_found`, `user_not_found`, `user_disconnected`,
    /// `pusher_not_found`.
    pub reason: &'static str,
}

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    /// Messages received from peers, by method.
    pub messages_in: Family<MethodLabel, Counter>,
    /// Messages queued to peers, by method.
    pub messages_out: Family<MethodLabel, Counter>,
    /// Error responses sent, by code.
    pub errors: Family<CodeLabel, Counter>,
    /// Messages that waited for the per-session rate limit (request / notification).
    pub rate_limited: Family<KindLabel, Counter>,
    /// Sessions closed for not keeping up with their queue.
    pub slow_consumers: Counter,
    /// Sessions closed for exceeding the rate limit again and again.
    pub rate_limit_closes: Counter,
    /// Frames that were not protoo (invalid JSON, wrong shape, binary).
    pub bad_frames: Counter,
    /// Time to handle a request in the center, by method.
    pub request_seconds: Family<MethodLabel, Histogram>,
    /// Events skipped by event-feed watchers that fell behind.
    pub feed_skipped: Counter,
    /// Upgrades refused (by HTTP status class).
    pub refused: Family<CodeLabel, Counter>,
    /// Connections closed before their handshake, by which bound.
    pub connections_dropped: Family<KindLabel, Counter>,
    /// Pulls (and text messages) that reached nobody, by method and reason.
    pub pulls_dropped: Family<DropLabel, Counter>,
    /// Users moved by a `join` from another live session (`replace`).
    pub users_replaced: Counter,
    /// Users taken back by a reconnecting session with the same identity.
    pub users_reclaimed: Counter,
    /// Pulls the publisher's SFU will not serve (no MSU in the room).
    pub pulls_unserved: Counter,
    /// `messages_in` per method, by [`METHODS`] index: counted on the hot
    /// path without the family's lock.
    in_by_method: Vec<Counter>,
    /// `messages_out` per method, likewise.
    out_by_method: Vec<Counter>,
    /// `request_seconds` per method, likewise, each taken from the family
    /// when first used (so a method never requested shows no histogram).
    request_by_method: Vec<std::sync::OnceLock<Histogram>>,
    sessions: Family<KindLabel, Gauge>,
    rooms: Gauge,
    users: Gauge,
    msus: Gauge,
    queue_depth: Gauge,
    queue_depth_max: Gauge,
}

/// A snapshot of the state gauges, taken from the center at scrape time.
#[derive(Debug, Default, Clone)]
pub struct StateGauges {
    /// Sessions by transport name (`ws`, `wss`, `grpc`).
    pub sessions: Vec<(&'static str, i64)>,
    /// Rooms.
    pub rooms: i64,
    /// Users.
    pub users: i64,
    /// MSUs.
    pub msus: i64,
    /// Items queued over all sessions.
    pub queue_depth: i64,
    /// Deepest single session queue.
    pub queue_depth_max: i64,
}

/// The protoo methods known to the center, as static labels.
const METHODS: &[&str] = &[
    "echo",
    "register",
    "join",
    "push",
    "pullRemoteStream",
    "userDisconnect",
    "userLeave",
    "textMessage",
    "userReConnect",
    "newUser",
    "newPusher",
    "invite",
    "response",
    "other",
];

/// `method` as a bounded label value.
pub fn method_label(method: &str) -> MethodLabel {
    MethodLabel {
        method: METHODS[method_index(method)],
    }
}

/// The position of `method` in [`METHODS`] (`other` when unknown).
fn method_index(method: &str) -> usize {
    METHODS
        .iter()
        .position(|m| *m == method)
        .unwrap_or(METHODS.len() - 1)
}

/// Messages one session's writer sent, by method, counted locally and
/// added to the shared counters once per write batch
/// ([`Metrics::outbound_tally`]): a shared counter bumped per message moved
/// its cache line between cores on every delivery.
#[derive(Debug, Default)]
pub struct OutboundTally {
    counts: [u64; METHODS.len()],
}

impl OutboundTally {
    /// Counts one message of `method`.
    pub fn count(&mut self, method: &str) {
        self.counts[method_index(method)] += 1;
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("pilot");
        let messages_in = Family::<MethodLabel, Counter>::default();
        let messages_out = Family::<MethodLabel, Counter>::default();
        let errors = Family::<CodeLabel, Counter>::default();
        let rate_limited = Family::<KindLabel, Counter>::default();
        let refused = Family::<CodeLabel, Counter>::default();
        let connections_dropped = Family::<KindLabel, Counter>::default();
        let slow_consumers = Counter::default();
        let rate_limit_closes = Counter::default();
        let bad_frames = Counter::default();
        let feed_skipped = Counter::default();
        let pulls_dropped = Family::<DropLabel, Counter>::default();
        let users_replaced = Counter::default();
        let users_reclaimed = Counter::default();
        let pulls_unserved = Counter::default();
        let request_seconds = Family::<MethodLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_005, 2.0, 20))
        });
        let sessions = Family::<KindLabel, Gauge>::default();
        let (rooms, users, msus) = (Gauge::default(), Gauge::default(), Gauge::default());
        let (queue_depth, queue_depth_max) = (Gauge::default(), Gauge::default());
        registry.register(
            "messages_in",
            "Messages received from peers",
            messages_in.clone(),
        );
        registry.register(
            "messages_out",
            "Messages queued to peers",
            messages_out.clone(),
        );
        registry.register(
            "errors",
            "Error responses sent, by protoo code",
            errors.clone(),
        );
        registry.register(
            "rate_limited",
            "Messages that waited for the per-session rate limit (none is dropped)",
            rate_limited.clone(),
        );
        registry.register(
            "slow_consumer_closes",
            "Sessions closed because their queue was full",
            slow_consumers.clone(),
        );
        registry.register(
            "rate_limit_closes",
            "Sessions closed for exceeding the rate limit repeatedly",
            rate_limit_closes.clone(),
        );
        registry.register(
            "bad_frames",
            "Frames ignored as not protoo",
            bad_frames.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time to handle a request",
            request_seconds.clone(),
        );
        registry.register(
            "event_feed_skipped",
            "Events skipped by lagging event-feed watchers",
            feed_skipped.clone(),
        );
        registry.register(
            "pulls_dropped",
            "pullRemoteStream (or textMessage) that reached nobody: its room, user or pusher is unknown, or the user is disconnected",
            pulls_dropped.clone(),
        );
        registry.register(
            "users_replaced",
            "Users moved by a join from another live session",
            users_replaced.clone(),
        );
        registry.register(
            "pulls_unserved",
            "pullRemoteStream the publisher's SFU will not serve: no MSU in the room, and the SFU sends each publisher to one destination, another puller's",
            pulls_unserved.clone(),
        );
        registry.register(
            "users_reclaimed",
            "Users taken back by a reconnecting session with the same identity",
            users_reclaimed.clone(),
        );
        registry.register(
            "connections_dropped",
            "Connections closed before their handshake: pending_full, pending_per_ip, rate_per_ip",
            connections_dropped.clone(),
        );
        registry.register(
            "upgrades_refused",
            "HTTP upgrade requests refused, by status",
            refused.clone(),
        );
        registry.register(
            "sessions",
            "Connected sessions by transport",
            sessions.clone(),
        );
        registry.register("rooms", "Rooms", rooms.clone());
        registry.register("users", "Users in all rooms", users.clone());
        registry.register("msus", "Registered MSUs", msus.clone());
        registry.register(
            "outbound_queue_depth",
            "Items queued to peers, all sessions",
            queue_depth.clone(),
        );
        registry.register(
            "outbound_queue_depth_max",
            "Items queued to the most backed-up session",
            queue_depth_max.clone(),
        );
        let per_method = |family: &Family<MethodLabel, Counter>| -> Vec<Counter> {
            METHODS
                .iter()
                .map(|m| family.get_or_create(&MethodLabel { method: m }).clone())
                .collect()
        };
        let (in_by_method, out_by_method) = (per_method(&messages_in), per_method(&messages_out));
        Self {
            registry,
            in_by_method,
            out_by_method,
            request_by_method: METHODS.iter().map(|_| std::sync::OnceLock::new()).collect(),
            messages_in,
            messages_out,
            errors,
            rate_limited,
            slow_consumers,
            rate_limit_closes,
            bad_frames,
            request_seconds,
            feed_skipped,
            refused,
            connections_dropped,
            pulls_dropped,
            users_replaced,
            users_reclaimed,
            pulls_unserved,
            sessions,
            rooms,
            users,
            msus,
            queue_depth,
            queue_depth_max,
        }
    }

    /// Counts a connection closed before its handshake (`reason`: which bound).
    pub fn connection_dropped(&self, reason: &'static str) {
        self.connections_dropped
            .get_or_create(&KindLabel { kind: reason })
            .inc();
    }

    /// Counts one message received, by method.
    pub fn inbound(&self, method: &str) {
        self.in_by_method[method_index(method)].inc();
    }

    /// Records how long a request took the center, by method.
    pub fn request_took(&self, label: &MethodLabel, took: std::time::Duration) {
        // A label comes from `method_label`, which hands out METHODS' own
        // strings: their address finds the slot without comparing text.
        let i = METHODS
            .iter()
            .position(|m| std::ptr::eq(*m, label.method))
            .unwrap_or_else(|| method_index(label.method));
        self.request_by_method[i]
            .get_or_init(|| self.request_seconds.get_or_create(label).clone())
            .observe(took.as_secs_f64());
    }

    /// Counts one message queued to a peer, by method.
    pub fn outbound(&self, method: &str) {
        self.out_by_method[method_index(method)].inc();
    }

    /// Adds what `tally` counted to the shared counters and empties it.
    pub fn outbound_tally(&self, tally: &mut OutboundTally) {
        for (counter, n) in self.out_by_method.iter().zip(&mut tally.counts) {
            if *n > 0 {
                counter.inc_by(std::mem::take(n));
            }
        }
    }

    /// Counts one error response, by protoo code.
    pub fn error(&self, code: u16) {
        self.errors.get_or_create(&CodeLabel { code }).inc();
    }

    /// Counts one message that waited for the rate limit (`request` or `notification`).
    pub fn limited(&self, kind: &'static str) {
        self.rate_limited.get_or_create(&KindLabel { kind }).inc();
    }

    /// The Prometheus/OpenMetrics text, with the state gauges set from `state`.
    pub fn render(&self, state: &StateGauges) -> String {
        for kind in ["ws", "wss", "grpc"] {
            let n = state
                .sessions
                .iter()
                .find(|(k, _)| *k == kind)
                .map_or(0, |(_, n)| *n);
            self.sessions.get_or_create(&KindLabel { kind }).set(n);
        }
        self.rooms.set(state.rooms);
        self.users.set(state.users);
        self.msus.set(state.msus);
        self.queue_depth.set(state.queue_depth);
        self.queue_depth_max.set(state.queue_depth_max);
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
