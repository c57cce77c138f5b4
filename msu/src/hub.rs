//! The media hub: one UDP socket that takes each publisher's RTP from its
//! SFU and sends it to every SFU that pulled it (PROTOCOL.md §8).
//!
//! - **Upstream** (from a publisher's SFU, its send relay): RTP is routed by
//!   SSRC to the relay that asked for it, kept in a bounded history, and
//!   sent to every destination that pulled that track; the SFU's RTCP
//!   (sender reports) goes to the relay's destinations too.
//! - **Downstream** (from a destination, an SFU's receive relay): key-frame
//!   requests (PLI, FIR) go upstream as one PLI per stream and interval
//!   (coalesced); NACKs are answered from the history, and what it no longer
//!   holds is asked upstream; receiver reports are kept, the worst loss per
//!   relay shown in the summary.
//!
//! The table of relays is what the center said last (`relay` replaces a
//! relay whole, `relayEnd` removes it). No await happens under its lock: a
//! packet is sent with `try_send_to` (a full socket buffer drops it, and it
//! is counted).

use crate::record::{Recorder, Store, TrackSpec};
use rtcp_types::prelude::*;
use rtcp_types::{Compound, Fir, Nack, Packet, PayloadFeedback, Pli, TransportFeedback};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

/// The SSRC the hub signs its own RTCP with.
pub const HUB_SSRC: u32 = 0x5049_4c54; // "PILT"

/// A relay's key: (room, publishing user).
pub type Key = (String, String);

/// One track of a publisher, as its `rtpParam` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Track {
    /// The pusher id.
    pub pusher_id: String,
    /// Its media SSRC.
    pub ssrc: u32,
    /// Its retransmission SSRC (0: none).
    pub rtx_ssrc: u32,
    /// Its codec, as `rtpParam` names it (`H264`, `opus`).
    pub codec: String,
}

/// A destination: where the tracks it pulled go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The SFU's receive relay.
    pub addr: SocketAddr,
    /// The pusher ids it pulled.
    pub pusher_ids: Vec<String>,
}

/// A relay as the center describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelaySpec {
    /// (room, publisher).
    pub key: Key,
    /// The tracks asked of the publisher's SFU.
    pub tracks: Vec<Track>,
    /// Where they go.
    pub destinations: Vec<Destination>,
    /// The recording the hub writes this publisher into ("": none).
    pub recording_id: String,
}

/// Counters of the hub's work (monotonic).
#[derive(Debug, Default)]
pub struct Stats {
    /// RTP packets taken from publishers' SFUs.
    pub rtp_in: AtomicU64,
    /// RTP packets sent to destinations (retransmissions included).
    pub rtp_out: AtomicU64,
    /// Packets nobody asked for (unknown SSRC or sender), dropped.
    pub unrouted: AtomicU64,
    /// Packets the socket would not take at once, dropped.
    pub send_dropped: AtomicU64,
    /// Key-frame requests sent to publishers' SFUs.
    pub keyframe_requests: AtomicU64,
    /// Key-frame requests folded into one sent shortly before.
    pub keyframe_coalesced: AtomicU64,
    /// NACKed packets resent from the history.
    pub nack_answered: AtomicU64,
    /// NACKed packets the history no longer held, asked upstream.
    pub nack_upstream: AtomicU64,
    /// Receiver reports taken from destinations.
    pub receiver_reports: AtomicU64,
    /// RTCP packets from publishers' SFUs passed to destinations.
    pub rtcp_forwarded: AtomicU64,
}

impl Stats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// One line of every counter.
    pub fn line(&self) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "rtp_in={} rtp_out={} unrouted={} send_dropped={} keyframe_requests={} keyframe_coalesced={} nack_answered={} nack_upstream={} receiver_reports={} rtcp_forwarded={}",
            g(&self.rtp_in),
            g(&self.rtp_out),
            g(&self.unrouted),
            g(&self.send_dropped),
            g(&self.keyframe_requests),
            g(&self.keyframe_coalesced),
            g(&self.nack_answered),
            g(&self.nack_upstream),
            g(&self.receiver_reports),
            g(&self.rtcp_forwarded),
        )
    }
}

/// The last packets of one stream, by sequence number (bounded).
struct History {
    slots: Vec<Option<(u16, Vec<u8>)>>,
}

impl History {
    fn new(capacity: usize) -> Self {
        Self {
            slots: (0..capacity).map(|_| None).collect(),
        }
    }

    fn slot(&self, seq: u16) -> usize {
        usize::from(seq) % self.slots.len()
    }

    fn keep(&mut self, seq: u16, packet: &[u8]) {
        let i = self.slot(seq);
        match &mut self.slots[i] {
            // Reuse the buffer: no allocation per packet once warm.
            Some((s, buf)) => {
                *s = seq;
                buf.clear();
                buf.extend_from_slice(packet);
            }
            empty => *empty = Some((seq, packet.to_vec())),
        }
    }

    fn get(&self, seq: u16) -> Option<&[u8]> {
        match &self.slots[self.slot(seq)] {
            Some((s, buf)) if *s == seq => Some(buf),
            _ => None,
        }
    }
}

/// What a destination said about one stream in its last receiver report.
#[derive(Debug, Clone, Copy, Default)]
struct Report {
    fraction_lost: u8,
    jitter: u32,
}

/// A relay as the hub runs it.
struct Relay {
    spec: RelaySpec,
    /// The publisher's SFU's send relay: learned from its first packet.
    source: Option<SocketAddr>,
    /// Destination -> the SSRCs it takes.
    routes: Vec<(SocketAddr, Vec<u32>)>,
    history: HashMap<u32, History>,
    last_keyframe_request: HashMap<u32, Instant>,
    reports: HashMap<(SocketAddr, u32), Report>,
    /// RTP packets taken from the publisher's SFU.
    packets_in: u64,
    /// RTP packets sent to destinations (retransmissions included).
    packets_out: u64,
    /// Writes the publisher's media, while it is recorded.
    recorder: Option<Recorder>,
}

/// One relay's counters, for the center (`relayStats`) and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counters {
    /// (room, publisher).
    pub key: Key,
    /// RTP packets from the publisher's SFU.
    pub packets_in: u64,
    /// RTP packets sent to destinations.
    pub packets_out: u64,
    /// The worst fraction lost (of 256) a destination reported last.
    pub worst_fraction_lost: u8,
    /// The worst interarrival jitter a destination reported last.
    pub worst_jitter: u32,
}

#[derive(Default)]
struct Table {
    relays: HashMap<Key, Relay>,
    /// SSRC (media and RTX) -> its relay.
    by_ssrc: HashMap<u32, Key>,
    /// Destination address -> the relays that send to it.
    by_destination: HashMap<SocketAddr, Vec<Key>>,
    /// Publisher SFU address -> its relay.
    by_source: HashMap<SocketAddr, Key>,
}

impl Table {
    fn reindex(&mut self) {
        self.by_ssrc.clear();
        self.by_destination.clear();
        self.by_source.clear();
        for (key, relay) in &self.relays {
            for t in &relay.spec.tracks {
                self.by_ssrc.insert(t.ssrc, key.clone());
                if t.rtx_ssrc != 0 {
                    self.by_ssrc.insert(t.rtx_ssrc, key.clone());
                }
            }
            for (addr, _) in &relay.routes {
                self.by_destination
                    .entry(*addr)
                    .or_default()
                    .push(key.clone());
            }
            if let Some(source) = relay.source {
                self.by_source.insert(source, key.clone());
            }
        }
    }
}

/// See the module docs.
pub struct Hub {
    socket: UdpSocket,
    store: Option<Arc<Store>>,
    /// SSRCs the MSU plays itself -> the flag a key-frame request for
    /// them raises (see `playback`).
    feedback: Mutex<HashMap<u32, Arc<std::sync::atomic::AtomicBool>>>,
    table: Mutex<Table>,
    stats: Stats,
    history_packets: usize,
    keyframe_interval: Duration,
}

/// Why the hub could not start.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// No port of the range could be bound.
    #[error("no free UDP port on {ip} between {min} and {max}: {last}")]
    NoPort {
        /// The address.
        ip: IpAddr,
        /// The range's first port.
        min: u16,
        /// The range's last port.
        max: u16,
        /// The last error.
        last: std::io::Error,
    },
}

impl Hub {
    /// Binds the first free port of `min..=max` on `ip`; recordings go to
    /// `store` (none: a relay asked to record is relayed only).
    pub async fn bind(
        ip: IpAddr,
        min: u16,
        max: u16,
        history_packets: usize,
        keyframe_interval: Duration,
        store: Option<Arc<Store>>,
    ) -> Result<Hub, HubError> {
        let mut last = std::io::Error::other("empty range");
        for port in min..=max {
            match UdpSocket::bind(SocketAddr::new(ip, port)).await {
                Ok(socket) => {
                    return Ok(Hub {
                        socket,
                        store,
                        feedback: Mutex::default(),
                        table: Mutex::default(),
                        stats: Stats::default(),
                        history_packets: history_packets.max(1),
                        keyframe_interval,
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(HubError::NoPort { ip, min, max, last })
    }

    /// Sends `packet` to `to` from the hub's socket (what the MSU plays
    /// itself); a full socket buffer drops it, counted.
    pub fn send_raw(&self, packet: &[u8], to: SocketAddr) {
        if self.send(packet, to) {
            Stats::add(&self.stats.rtp_out, 1);
        }
    }

    /// Key-frame requests (PLI, FIR) for `ssrc`, which the MSU plays, raise
    /// `flag`.
    pub fn watch_feedback(&self, ssrc: u32, flag: Arc<std::sync::atomic::AtomicBool>) {
        self.feedback().insert(ssrc, flag);
    }

    /// No more feedback for `ssrc`.
    pub fn unwatch_feedback(&self, ssrc: u32) {
        self.feedback().remove(&ssrc);
    }

    /// RTCP about what the MSU plays: whether it was (a key-frame request
    /// raises the player's flag; reports are taken and dropped).
    fn playback_feedback(&self, packet: &[u8]) -> bool {
        let Ok(compound) = Compound::parse(packet) else {
            return false;
        };
        let watched = self.feedback();
        let mut ours = false;
        for p in compound.flatten() {
            match p {
                Packet::PayloadFeedback(pf)
                    if pf.parse_fci::<Pli>().is_ok() || pf.parse_fci::<Fir>().is_ok() =>
                {
                    if let Some(flag) = watched.get(&pf.media_ssrc()) {
                        flag.store(true, Ordering::Relaxed);
                        ours = true;
                    }
                }
                Packet::Rr(rr) => {
                    ours |= rr.report_blocks().any(|b| watched.contains_key(&b.ssrc()));
                }
                _ => {}
            }
        }
        ours
    }

    /// The address bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// The hub's counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    fn feedback(&self) -> MutexGuard<'_, HashMap<u32, Arc<std::sync::atomic::AtomicBool>>> {
        // As for the table: a panic elsewhere left it as it was.
        self.feedback.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // A panic elsewhere left the table as it was; go on with it.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The destinations of relay `key`, in the center's order.
    pub fn destinations(&self, key: &Key) -> Vec<SocketAddr> {
        self.table()
            .relays
            .get(key)
            .map(|r| r.routes.iter().map(|(a, _)| *a).collect())
            .unwrap_or_default()
    }

    /// How many relays the hub runs.
    pub fn relays(&self) -> usize {
        self.table().relays.len()
    }

    /// The relay `spec.key` is now `spec` (its history and learned source
    /// are kept).
    pub fn apply(&self, spec: RelaySpec) {
        let routes = routes_of(&spec);
        let mut table = self.table();
        let key = spec.key.clone();
        match table.relays.get_mut(&key) {
            Some(relay) => {
                relay.spec = spec;
                relay.routes = routes;
                self.reconcile_recorder(relay);
            }
            None => {
                table.relays.insert(
                    key.clone(),
                    Relay {
                        spec,
                        source: None,
                        routes,
                        history: HashMap::new(),
                        last_keyframe_request: HashMap::new(),
                        reports: HashMap::new(),
                        packets_in: 0,
                        packets_out: 0,
                        recorder: None,
                    },
                );
                if let Some(relay) = table.relays.get_mut(&key) {
                    self.reconcile_recorder(relay);
                }
            }
        }
        table.reindex();
    }

    /// Starts, keeps, restarts (its tracks changed: a new part) or stops
    /// the relay's recorder as its spec says.
    fn reconcile_recorder(&self, relay: &mut Relay) {
        let tracks: Vec<TrackSpec> = relay
            .spec
            .tracks
            .iter()
            .map(|t| TrackSpec {
                pusher_id: t.pusher_id.clone(),
                ssrc: t.ssrc,
                rtx_ssrc: t.rtx_ssrc,
                codec: t.codec.clone(),
            })
            .collect();
        let want = &relay.spec.recording_id;
        let keep = relay
            .recorder
            .as_ref()
            .is_some_and(|r| r.recording_id() == want && r.tracks() == tracks);
        if keep {
            return;
        }
        // Dropped, its thread closes the file by itself.
        relay.recorder = None;
        let (Some(store), false) = (&self.store, want.is_empty()) else {
            return;
        };
        let (room_id, user_id) = &relay.spec.key;
        if !crate::record::valid_id(want) {
            // It names a directory: never a path of the center's choosing.
            tracing::warn!(recording.id = %want, room.id = %room_id, user.id = %user_id, "not a recording id: not recorded");
            return;
        }
        tracing::info!(recording.id = %want, room.id = %room_id, user.id = %user_id, "recording");
        relay.recorder = Some(Recorder::start(
            store.clone(),
            want,
            room_id,
            user_id,
            tracks,
        ));
    }

    /// Stops every recorder and waits until their files are closed (at
    /// shutdown).
    pub fn finish_recordings(&self) {
        let recorders: Vec<Recorder> = self
            .table()
            .relays
            .values_mut()
            .filter_map(|r| r.recorder.take())
            .collect();
        for r in recorders {
            r.finish();
        }
    }

    /// How many publishers are being recorded.
    pub fn recording(&self) -> usize {
        self.table()
            .relays
            .values()
            .filter(|r| r.recorder.is_some())
            .count()
    }

    /// The relay `key` ends.
    pub fn end(&self, key: &Key) {
        let mut table = self.table();
        if table.relays.remove(key).is_some() {
            table.reindex();
        }
    }

    /// Every relay's counters, sorted by key; receiver reports summarised
    /// as the worst any destination gave.
    pub fn counters(&self) -> Vec<Counters> {
        let table = self.table();
        let mut out: Vec<Counters> = table
            .relays
            .iter()
            .map(|(k, r)| Counters {
                key: k.clone(),
                packets_in: r.packets_in,
                packets_out: r.packets_out,
                worst_fraction_lost: r
                    .reports
                    .values()
                    .map(|x| x.fraction_lost)
                    .max()
                    .unwrap_or(0),
                worst_jitter: r.reports.values().map(|x| x.jitter).max().unwrap_or(0),
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    /// Serves packets until the socket fails (never, in practice) or the
    /// future is dropped.
    pub async fn run(&self) -> std::io::Result<()> {
        let mut buf = vec![0u8; 65_536];
        loop {
            let (n, from) = match self.socket.recv_from(&mut buf).await {
                Ok(x) => x,
                // An ICMP port unreachable from an earlier send: the
                // destination is gone for now; go on.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                Err(e) => return Err(e),
            };
            let Some(packet) = buf.get(..n) else { continue };
            if is_rtcp(packet) {
                self.on_rtcp(from, packet);
            } else {
                self.on_rtp(from, packet);
            }
        }
    }

    fn send(&self, packet: &[u8], to: SocketAddr) -> bool {
        match self.socket.try_send_to(packet, to) {
            Ok(_) => true,
            Err(_) => {
                Stats::add(&self.stats.send_dropped, 1);
                false
            }
        }
    }

    fn on_rtp(&self, from: SocketAddr, packet: &[u8]) {
        let Ok(rtp) = rtp_types::RtpPacket::parse(packet) else {
            Stats::add(&self.stats.unrouted, 1);
            return;
        };
        let (ssrc, seq) = (rtp.ssrc(), rtp.sequence_number());
        let mut table = self.table();
        let Some(key) = table.by_ssrc.get(&ssrc).cloned() else {
            Stats::add(&self.stats.unrouted, 1);
            return;
        };
        let history_packets = self.history_packets;
        let Some(relay) = table.relays.get_mut(&key) else {
            return;
        };
        Stats::add(&self.stats.rtp_in, 1);
        relay.packets_in += 1;
        let learned = relay.source != Some(from);
        relay.source = Some(from);
        relay
            .history
            .entry(ssrc)
            .or_insert_with(|| History::new(history_packets))
            .keep(seq, packet);
        let mut sent = 0;
        for (addr, ssrcs) in &relay.routes {
            if ssrcs.contains(&ssrc) && self.send(packet, *addr) {
                sent += 1;
            }
        }
        Stats::add(&self.stats.rtp_out, sent);
        relay.packets_out += sent;
        // What the recorder found missing is asked of the publisher's SFU.
        let missing = relay
            .recorder
            .as_ref()
            .map(Recorder::take_missing)
            .unwrap_or_default();
        for (ssrc, seqs) in group_by_ssrc(&missing) {
            self.nack_upstream(from, ssrc, &seqs);
        }
        let keyframe = relay.recorder.as_ref().and_then(|r| {
            r.rtp(packet);
            // The recorder needs a key frame (it starts, or lost one).
            r.wants_keyframe
                .swap(false, Ordering::Relaxed)
                .then(|| {
                    r.tracks()
                        .iter()
                        .find(|t| t.codec.eq_ignore_ascii_case("h264"))
                })
                .flatten()
                .map(|t| t.ssrc)
        });
        if let Some(video) = keyframe {
            self.keyframe_request(&mut table, video);
        }
        if learned {
            tracing::info!(room.id = %key.0, pusher.user = %key.1, source = %from, "publisher's SFU sends here");
            table.reindex();
        }
    }

    fn on_rtcp(&self, from: SocketAddr, packet: &[u8]) {
        let mut table = self.table();
        if let Some(key) = table.by_source.get(&from).cloned() {
            // The publisher's SFU (sender reports): on to its destinations
            // and its recorder.
            if let Some(relay) = table.relays.get(&key) {
                if let Some(r) = &relay.recorder {
                    r.rtcp(packet);
                }
                for (addr, _) in &relay.routes {
                    if self.send(packet, *addr) {
                        Stats::add(&self.stats.rtcp_forwarded, 1);
                    }
                }
            }
            return;
        }
        if !table.by_destination.contains_key(&from) {
            drop(table);
            if !self.playback_feedback(packet) {
                Stats::add(&self.stats.unrouted, 1);
            }
            return;
        }
        let Ok(compound) = Compound::parse(packet) else {
            Stats::add(&self.stats.unrouted, 1);
            return;
        };
        for p in compound.flatten() {
            match p {
                Packet::PayloadFeedback(pf)
                    if pf.parse_fci::<Pli>().is_ok() || pf.parse_fci::<Fir>().is_ok() =>
                {
                    self.keyframe_request(&mut table, pf.media_ssrc());
                }
                Packet::TransportFeedback(tf) => {
                    if let Ok(nack) = tf.parse_fci::<Nack>() {
                        let seqs: Vec<u16> = nack.entries().collect();
                        self.answer_nack(&mut table, from, tf.media_ssrc(), &seqs);
                    }
                }
                Packet::Rr(rr) => {
                    Stats::add(&self.stats.receiver_reports, 1);
                    for block in rr.report_blocks() {
                        let Some(key) = table.by_ssrc.get(&block.ssrc()).cloned() else {
                            continue;
                        };
                        if let Some(relay) = table.relays.get_mut(&key) {
                            relay.reports.insert(
                                (from, block.ssrc()),
                                Report {
                                    fraction_lost: block.fraction_lost(),
                                    jitter: block.interarrival_jitter(),
                                },
                            );
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// A destination asked for a key frame of `ssrc`: one PLI upstream per
    /// stream and interval.
    fn keyframe_request(&self, table: &mut Table, ssrc: u32) {
        let Some(key) = table.by_ssrc.get(&ssrc).cloned() else {
            return;
        };
        let Some(relay) = table.relays.get_mut(&key) else {
            return;
        };
        // A stream the MSU plays itself: its player restarts at a key frame.
        if let Some(flag) = self.feedback().get(&ssrc) {
            flag.store(true, Ordering::Relaxed);
            return;
        }
        let Some(source) = relay.source else {
            // Nothing came from the publisher yet: its first packets will
            // start with what the SFU sends a new relay.
            return;
        };
        let now = Instant::now();
        if relay
            .last_keyframe_request
            .get(&ssrc)
            .is_some_and(|t| now.duration_since(*t) < self.keyframe_interval)
        {
            Stats::add(&self.stats.keyframe_coalesced, 1);
            return;
        }
        relay.last_keyframe_request.insert(ssrc, now);
        let pli = PayloadFeedback::builder_owned(Pli::builder())
            .sender_ssrc(HUB_SSRC)
            .media_ssrc(ssrc);
        if let Some(bytes) = write(&pli)
            && self.send(&bytes, source)
        {
            Stats::add(&self.stats.keyframe_requests, 1);
        }
    }

    /// Resends what `to` NACKed of `ssrc` from the history; asks the
    /// publisher's SFU for the rest.
    fn answer_nack(&self, table: &mut Table, to: SocketAddr, ssrc: u32, seqs: &[u16]) {
        let Some(key) = table.by_ssrc.get(&ssrc).cloned() else {
            return;
        };
        let Some(relay) = table.relays.get_mut(&key) else {
            return;
        };
        let history = relay.history.get(&ssrc);
        let mut missing = Vec::new();
        let mut resent = 0;
        for seq in seqs {
            match history.and_then(|h| h.get(*seq)) {
                Some(packet) => {
                    if self.send(packet, to) {
                        Stats::add(&self.stats.nack_answered, 1);
                        Stats::add(&self.stats.rtp_out, 1);
                        resent += 1;
                    }
                }
                None => missing.push(*seq),
            }
        }
        relay.packets_out += resent;
        let played_here = self.feedback().contains_key(&ssrc);
        if let (false, Some(source), false) = (missing.is_empty(), relay.source, played_here) {
            self.nack_upstream(source, ssrc, &missing);
        }
    }

    /// Asks the publisher's SFU at `source` for packets `seqs` of `ssrc`.
    fn nack_upstream(&self, source: SocketAddr, ssrc: u32, seqs: &[u16]) {
        let nack = seqs
            .iter()
            .fold(Nack::builder(), |b, s| b.add_rtp_sequence(*s));
        let feedback = TransportFeedback::builder_owned(nack)
            .sender_ssrc(HUB_SSRC)
            .media_ssrc(ssrc);
        if let Some(bytes) = write(&feedback)
            && self.send(&bytes, source)
        {
            Stats::add(&self.stats.nack_upstream, seqs.len() as u64);
        }
    }
}

/// `(ssrc, seq)` pairs grouped by SSRC, in order.
fn group_by_ssrc(pairs: &[(u32, u16)]) -> Vec<(u32, Vec<u16>)> {
    let mut out: Vec<(u32, Vec<u16>)> = Vec::new();
    for (ssrc, seq) in pairs {
        match out.iter_mut().find(|(s, _)| s == ssrc) {
            Some((_, seqs)) => seqs.push(*seq),
            None => out.push((*ssrc, vec![*seq])),
        }
    }
    out
}

/// Destination -> the SSRCs of the tracks it pulled.
fn routes_of(spec: &RelaySpec) -> Vec<(SocketAddr, Vec<u32>)> {
    spec.destinations
        .iter()
        .map(|d| {
            let ssrcs = spec
                .tracks
                .iter()
                .filter(|t| d.pusher_ids.contains(&t.pusher_id))
                .flat_map(|t| [t.ssrc, t.rtx_ssrc])
                .filter(|s| *s != 0)
                .collect();
            (d.addr, ssrcs)
        })
        .collect()
}

/// RTP and RTCP share the socket (RFC 5761): RTCP packet types 192–223
/// fall where RTP's marker bit and payload type would be.
pub fn is_rtcp(packet: &[u8]) -> bool {
    packet.len() >= 8 && packet[0] >> 6 == 2 && (192..=223).contains(&packet[1])
}

fn write(packet: &impl RtcpPacketWriterExt) -> Option<Vec<u8>> {
    let size = packet.calculate_size().ok()?;
    let mut buf = vec![0u8; size];
    packet.write_into(&mut buf).ok()?;
    Some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_keeps_the_last_packets_by_sequence() {
        let mut h = History::new(4);
        for seq in 0u16..6 {
            h.keep(seq, &[seq as u8]);
        }
        assert_eq!(h.get(5), Some(&[5u8][..]));
        assert_eq!(h.get(2), Some(&[2u8][..]));
        assert_eq!(h.get(1), None, "overwritten by 5");
        assert_eq!(h.get(0xffff), None);
    }

    #[test]
    fn rtcp_is_told_from_rtp() {
        // An RTP packet, payload type 111 with the marker bit: 0xef.
        assert!(!is_rtcp(&[0x80, 0xef, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]));
        // A receiver report (201).
        assert!(is_rtcp(&[0x80, 201, 0, 1, 0, 0, 0, 1]));
    }

    #[test]
    fn a_destination_gets_the_tracks_it_pulled_with_their_rtx() {
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap_or_else(|e| panic!("{e}"));
        let spec = RelaySpec {
            key: ("r".into(), "u".into()),
            tracks: vec![
                Track {
                    pusher_id: "v".into(),
                    ssrc: 1,
                    rtx_ssrc: 2,
                    codec: "H264".into(),
                },
                Track {
                    pusher_id: "a".into(),
                    ssrc: 3,
                    rtx_ssrc: 0,
                    codec: "opus".into(),
                },
            ],
            destinations: vec![Destination {
                addr,
                pusher_ids: vec!["v".into()],
            }],
            recording_id: String::new(),
        };
        assert_eq!(routes_of(&spec), vec![(addr, vec![1, 2])]);
    }
}
