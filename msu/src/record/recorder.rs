//! A recorded user's writer: a thread of its own fed through a bounded
//! queue, which puts the packets back in order, repairs what it can,
//! depacketises and writes the user's file.

use super::fmp4::{Fmp4File, Sample, TrackKind};
use super::h264;
use super::store::{EventKind, Store};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Packets queued per recorded user before the hub drops them.
pub const QUEUE_PACKETS: usize = 4096;
/// Packets held to put a reordered video stream back in sequence.
pub const REORDER_PACKETS: usize = 64;
/// A recorded user whose SFU sent nothing for this long is reported.
pub const SILENCE: Duration = Duration::from_secs(10);
/// Audio held while the first key frame is awaited; past it an audio-only
/// part starts (and a new part with video once a key frame comes).
pub const AUDIO_WAIT: Duration = Duration::from_secs(5);

/// A track to record, as the relay names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackSpec {
    /// The pusher id.
    pub pusher_id: String,
    /// Its media SSRC.
    pub ssrc: u32,
    /// Its retransmission SSRC (0: none): RTX packets repair losses.
    pub rtx_ssrc: u32,
    /// Its codec name as `rtpParam` gives it (`H264`, `opus`).
    pub codec: String,
}

/// What the hub hands a recorder.
enum Input {
    Rtp(Vec<u8>, SystemTime),
    Rtcp(Vec<u8>),
}

/// A recorded user, as the hub holds it: dropping it ends the recording
/// of that user (its thread writes what it holds and closes the file).
pub struct Recorder {
    recording_id: String,
    tracks: Vec<TrackSpec>,
    tx: Option<SyncSender<Input>>,
    /// Set by the recorder when it needs a key frame (at the start, after a
    /// loss); the hub asks the publisher's SFU and clears it.
    pub wants_keyframe: Arc<AtomicBool>,
    /// Packets dropped because the queue was full.
    pub dropped: AtomicU64,
    /// (SSRC, sequence number) of video packets the recorder found missing:
    /// the hub asks the publisher's SFU for them (NACK), which answers with
    /// RTX.
    missing: Arc<Mutex<Vec<(u32, u16)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Recorder {
    /// Starts recording `user_id` of `room_id` into recording
    /// `recording_id` of `store`.
    pub fn start(
        store: Arc<Store>,
        recording_id: &str,
        room_id: &str,
        user_id: &str,
        tracks: Vec<TrackSpec>,
    ) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_PACKETS);
        let wants_keyframe = Arc::new(AtomicBool::new(true));
        let missing: Arc<Mutex<Vec<(u32, u16)>>> = Arc::default();
        let writer = Writer::new(
            store,
            recording_id.to_owned(),
            room_id.to_owned(),
            user_id.to_owned(),
            &tracks,
            wants_keyframe.clone(),
            missing.clone(),
        );
        let thread = std::thread::Builder::new()
            .name(format!("record {user_id}"))
            .spawn(move || writer.run(rx))
            .map_err(|e| tracing::error!(error = %e, "recorder thread not started"))
            .ok();
        Self {
            recording_id: recording_id.to_owned(),
            tracks,
            tx: Some(tx),
            wants_keyframe,
            dropped: AtomicU64::new(0),
            missing,
            thread,
        }
    }

    /// The packets found missing since the last call, to ask for again.
    pub fn take_missing(&self) -> Vec<(u32, u16)> {
        std::mem::take(&mut *self.missing.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The recording it writes.
    pub fn recording_id(&self) -> &str {
        &self.recording_id
    }

    /// The tracks it records.
    pub fn tracks(&self) -> &[TrackSpec] {
        &self.tracks
    }

    fn offer(&self, input: Input) {
        if let Some(tx) = &self.tx
            && let Err(TrySendError::Full(_)) = tx.try_send(input)
        {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// An RTP packet of the user's (never waits).
    pub fn rtp(&self, packet: &[u8]) {
        self.offer(Input::Rtp(packet.to_vec(), SystemTime::now()));
    }

    /// An RTCP packet from the user's SFU (sender reports time the tracks).
    pub fn rtcp(&self, packet: &[u8]) {
        self.offer(Input::Rtcp(packet.to_vec()));
    }

    /// Ends the recording of this user and waits until its file is closed.
    pub fn finish(mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        // The thread sees the queue close and finishes by itself.
        self.tx = None;
    }
}

/// Sequence numbers and timestamps extended past their wrap.
#[derive(Debug, Default, Clone, Copy)]
struct Unwrap {
    last: Option<i64>,
}

impl Unwrap {
    fn seq(&mut self, v: u16) -> i64 {
        self.next(i64::from(v), 1 << 16)
    }

    fn ts(&mut self, v: u32) -> i64 {
        self.next(i64::from(v), 1 << 32)
    }

    fn next(&mut self, v: i64, modulo: i64) -> i64 {
        let out = match self.last {
            None => v,
            Some(last) => {
                let mut d = (v - last.rem_euclid(modulo)).rem_euclid(modulo);
                if d > modulo / 2 {
                    d -= modulo;
                }
                last + d
            }
        };
        if self.last.is_none_or(|l| out > l) {
            self.last = Some(out);
        }
        out
    }
}

/// One incoming track's state.
struct Track {
    spec: TrackSpec,
    video: bool,
    seq: Unwrap,
    ts: Unwrap,
    /// (wall seconds, extended RTP timestamp) from the last sender report.
    report: Option<(f64, u32)>,
    /// (wall seconds, extended timestamp) of its first packet.
    first: Option<(f64, i64)>,
    next_seq: Option<i64>,
    /// The highest sequence number seen: a gap beyond it is asked for once.
    highest: i64,
    reorder: BTreeMap<i64, (Vec<u8>, f64)>,
    depacketizer: h264::Depacketizer,
    needs_keyframe: bool,
    /// Wall time of the last key frame written.
    last_keyframe: f64,
    sps: Option<Vec<u8>>,
    pps: Option<Vec<u8>>,
}

/// A sample on its way to a file: its track, wall time, timestamp.
struct Pending {
    track: usize,
    wall: f64,
    ts: i64,
    data: Vec<u8>,
    sync: bool,
}

/// The file being written and how its tracks map.
struct Open {
    file: Fmp4File,
    name: String,
    /// Incoming track index -> (file track index, dts offset, anchor ts).
    map: HashMap<usize, (usize, i64, i64)>,
    origin: f64,
    with_video: bool,
}

/// The recorder's thread.
struct Writer {
    store: Arc<Store>,
    recording_id: String,
    room_id: String,
    user_id: String,
    tracks: Vec<Track>,
    wants_keyframe: Arc<AtomicBool>,
    missing: Arc<Mutex<Vec<(u32, u16)>>>,
    waiting: VecDeque<Pending>,
    open: Option<Open>,
    failed: bool,
}

fn wall(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Writer {
    fn new(
        store: Arc<Store>,
        recording_id: String,
        room_id: String,
        user_id: String,
        specs: &[TrackSpec],
        wants_keyframe: Arc<AtomicBool>,
        missing: Arc<Mutex<Vec<(u32, u16)>>>,
    ) -> Self {
        let mut tracks = Vec::new();
        for spec in specs {
            let video = match spec.codec.to_ascii_lowercase().as_str() {
                "h264" => true,
                "opus" => false,
                other => {
                    store.emit(
                        &recording_id,
                        &room_id,
                        &user_id,
                        EventKind::Failed {
                            reason: format!(
                                "track {} ({other:?}): only H264 and Opus are recorded",
                                spec.pusher_id
                            ),
                        },
                    );
                    continue;
                }
            };
            tracks.push(Track {
                spec: spec.clone(),
                video,
                seq: Unwrap::default(),
                ts: Unwrap::default(),
                report: None,
                first: None,
                next_seq: None,
                highest: i64::MIN,
                reorder: BTreeMap::new(),
                depacketizer: h264::Depacketizer::default(),
                needs_keyframe: true,
                last_keyframe: 0.0,
                sps: None,
                pps: None,
            });
        }
        Self {
            store,
            recording_id,
            room_id,
            user_id,
            tracks,
            wants_keyframe,
            missing,
            waiting: VecDeque::new(),
            open: None,
            failed: false,
        }
    }

    fn run(mut self, rx: Receiver<Input>) {
        let mut silent = false;
        loop {
            let input = match rx.recv_timeout(self.store.silence) {
                Ok(input) => input,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    if !silent && !self.failed {
                        // Nothing fails silently: the stream stopped.
                        silent = true;
                        let reason = format!(
                            "no media from its SFU for {} s",
                            self.store.silence.as_secs_f64()
                        );
                        tracing::warn!(recording.id = %self.recording_id, user.id = %self.user_id, %reason, "recorded stream stopped");
                        self.store.emit(
                            &self.recording_id,
                            &self.room_id,
                            &self.user_id,
                            EventKind::Failed { reason },
                        );
                    }
                    continue;
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            };
            if self.failed {
                continue; // drained, so the hub never waits
            }
            if silent && matches!(input, Input::Rtp(..)) {
                silent = false;
                tracing::info!(recording.id = %self.recording_id, user.id = %self.user_id, "recorded stream back");
            }
            match input {
                Input::Rtp(packet, at) => self.rtp(&packet, wall(at)),
                Input::Rtcp(packet) => self.rtcp(&packet),
            }
        }
        // The stream ended: what reorder held goes in, then the file closes.
        for i in 0..self.tracks.len() {
            while let Some((&seq, _)) = self.tracks[i].reorder.first_key_value() {
                self.tracks[i].next_seq = Some(seq);
                self.drain(i);
            }
        }
        self.close();
    }

    fn fail(&mut self, reason: String) {
        tracing::error!(recording.id = %self.recording_id, user.id = %self.user_id, %reason, "recording failed");
        self.store.emit(
            &self.recording_id,
            &self.room_id,
            &self.user_id,
            EventKind::Failed { reason },
        );
        self.failed = true;
        self.open = None;
    }

    fn rtcp(&mut self, packet: &[u8]) {
        let Ok(compound) = rtcp_types::Compound::parse(packet) else {
            return;
        };
        for p in compound.flatten() {
            if let rtcp_types::Packet::Sr(sr) = p
                && let Some(t) = self.tracks.iter_mut().find(|t| t.spec.ssrc == sr.ssrc())
            {
                let ntp = sr.ntp_timestamp();
                let secs = (ntp >> 32) as f64 - 2_208_988_800.0
                    + (ntp & 0xffff_ffff) as f64 / 4_294_967_296.0;
                t.report = Some((secs, sr.rtp_timestamp()));
            }
        }
    }

    fn rtp(&mut self, packet: &[u8], at: f64) {
        let Ok(rtp) = rtp_types::RtpPacket::parse(packet) else {
            return;
        };
        let ssrc = rtp.ssrc();
        if let Some(t) = self
            .tracks
            .iter()
            .find(|t| t.video && t.spec.rtx_ssrc != 0 && t.spec.rtx_ssrc == ssrc)
        {
            // RTX (RFC 4588): the original sequence number, then the
            // original payload; the header keeps its timestamp and marker.
            let payload = rtp.payload();
            if payload.len() < 2 {
                return;
            }
            let mut original = Vec::with_capacity(12 + payload.len());
            original.push(0x80);
            original.push(if rtp.marker_bit() { 0x80 } else { 0 });
            original.extend_from_slice(&payload[..2]);
            original.extend_from_slice(&rtp.timestamp().to_be_bytes());
            original.extend_from_slice(&t.spec.ssrc.to_be_bytes());
            original.extend_from_slice(&payload[2..]);
            return self.rtp(&original, at);
        }
        let Some(i) = self.tracks.iter().position(|t| t.spec.ssrc == ssrc) else {
            return; // tracks not recorded
        };
        let t = &mut self.tracks[i];
        let seq = t.seq.seq(rtp.sequence_number());
        if !t.video {
            let ts = t.ts.ts(rtp.timestamp());
            if t.next_seq.is_some_and(|n| seq < n) {
                return; // late or repeated
            }
            t.next_seq = Some(seq + 1);
            let data = rtp.payload().to_vec();
            self.sample(i, at, ts, data, true);
            return;
        }
        if t.next_seq.is_some_and(|n| seq < n) {
            return;
        }
        // A gap beyond what was seen: asked for once (bounded).
        if t.highest != i64::MIN && seq > t.highest + 1 {
            let lost: Vec<(u32, u16)> = (t.highest + 1..seq)
                .take(REORDER_PACKETS)
                .map(|s| (ssrc, s as u16))
                .collect();
            self.missing
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(lost);
        }
        let t = &mut self.tracks[i];
        t.highest = t.highest.max(seq);
        t.reorder.insert(seq, (packet.to_vec(), at));
        if t.next_seq.is_none() {
            t.next_seq = Some(seq);
        }
        self.drain(i);
    }

    /// Feeds track `i`'s packets that are next in sequence.
    fn drain(&mut self, i: usize) {
        loop {
            let t = &mut self.tracks[i];
            let Some((&seq, _)) = t.reorder.first_key_value() else {
                return;
            };
            let Some(next) = t.next_seq else { return };
            // Out of order: wait, until the window is full (then what is
            // missing is lost).
            if seq != next && t.reorder.len() <= REORDER_PACKETS {
                return;
            }
            let lost = seq != next;
            let Some((packet, at)) = t.reorder.remove(&seq) else {
                return;
            };
            t.next_seq = Some(seq + 1);
            let Ok(rtp) = rtp_types::RtpPacket::parse(&packet) else {
                continue;
            };
            if lost {
                t.needs_keyframe = true;
                self.wants_keyframe.store(true, Ordering::Relaxed);
            }
            let ts = t.ts.ts(rtp.timestamp());
            let Some(au) =
                t.depacketizer
                    .push(lost, rtp.timestamp(), rtp.marker_bit(), rtp.payload())
            else {
                continue;
            };
            // The picture's own timestamp (a late marker can close an
            // earlier one).
            let au_ts = ts - i64::from(rtp.timestamp().wrapping_sub(au.rtp_ts) as i32);
            let key = au.is_keyframe();
            for nal in &au.nals {
                match h264::nal_type(nal) {
                    7 => t.sps = Some(nal.clone()),
                    8 => t.pps = Some(nal.clone()),
                    _ => {}
                }
            }
            if t.needs_keyframe && !key {
                self.wants_keyframe.store(true, Ordering::Relaxed);
                continue;
            }
            t.needs_keyframe = false;
            let every = self.store.keyframe_every.as_secs_f64();
            if key {
                t.last_keyframe = at;
            } else if every > 0.0 && at - t.last_keyframe >= every {
                // Coalesced by the hub; asked again until one comes.
                self.wants_keyframe.store(true, Ordering::Relaxed);
            }
            let mut data = Vec::with_capacity(au.nals.iter().map(|n| n.len() + 4).sum());
            for nal in &au.nals {
                if h264::nal_type(nal) == 9 {
                    continue; // access unit delimiters add nothing
                }
                data.extend_from_slice(&u32::try_from(nal.len()).unwrap_or(0).to_be_bytes());
                data.extend_from_slice(nal);
            }
            self.sample(i, at, au_ts, data, key);
        }
    }

    /// A complete sample of track `i` arrived at wall time `at`.
    fn sample(&mut self, i: usize, at: f64, ts: i64, data: Vec<u8>, sync: bool) {
        let t = &mut self.tracks[i];
        let clock = if t.video { 90_000.0 } else { 48_000.0 };
        let first = *t.first.get_or_insert((at, ts));
        // Its wall time: from the last sender report when there is one,
        // else from when the track's first packet arrived.
        let wall = match t.report {
            Some((secs, rtp)) => secs + f64::from(ts.wrapping_sub(i64::from(rtp)) as i32) / clock,
            None => first.0 + (ts - first.1) as f64 / clock,
        };
        let pending = Pending {
            track: i,
            wall,
            ts,
            data,
            sync,
        };
        let has_video = self.tracks.iter().any(|t| t.video);
        let video_ready = |w: &Writer| {
            w.tracks
                .iter()
                .any(|t| t.video && t.sps.is_some() && t.pps.is_some())
        };
        match &self.open {
            Some(open) if open.map.contains_key(&i) => self.write(pending),
            Some(open) if !open.with_video && self.tracks[i].video && sync && video_ready(self) => {
                // Video came to an audio-only part: a new part with both.
                self.close();
                self.waiting.push_back(pending);
                self.open_file();
            }
            Some(_) => {}
            None => {
                self.waiting.push_back(pending);
                let key_came = self.tracks[i].video && sync && video_ready(self);
                let waited = self
                    .waiting
                    .front()
                    .is_some_and(|f| wall - f.wall > AUDIO_WAIT.as_secs_f64());
                if !has_video || key_came || waited {
                    self.open_file();
                }
            }
        }
    }

    /// Opens a file with the tracks that can be written now and writes
    /// what waited for it.
    fn open_file(&mut self) {
        let mut kinds = Vec::new();
        let mut specs = Vec::new();
        let mut incoming = Vec::new();
        for (i, t) in self.tracks.iter().enumerate() {
            let kind = if t.video {
                match (&t.sps, &t.pps) {
                    (Some(sps), Some(pps))
                        if self.waiting.iter().any(|p| p.track == i && p.sync) =>
                    {
                        let (width, height) = h264::sps_size(sps).unwrap_or((0, 0));
                        TrackKind::H264 {
                            sps: sps.clone(),
                            pps: pps.clone(),
                            width,
                            height,
                        }
                    }
                    _ => continue,
                }
            } else {
                TrackKind::Opus { channels: 2 }
            };
            kinds.push(kind);
            specs.push(&t.spec);
            incoming.push(i);
        }
        if kinds.is_empty() {
            return;
        }
        // Video starts at its key frame: what came before it is dropped.
        if let Some(k) = self
            .waiting
            .iter()
            .position(|p| self.tracks[p.track].video && p.sync)
        {
            let mut rest: VecDeque<Pending> = VecDeque::new();
            for (j, p) in self.waiting.drain(..).enumerate() {
                if !self.tracks[p.track].video || j >= k {
                    rest.push_back(p);
                }
            }
            self.waiting = rest;
        }
        let origin = self
            .waiting
            .iter()
            .filter(|p| incoming.contains(&p.track))
            .map(|p| p.wall)
            .fold(f64::INFINITY, f64::min);
        if !origin.is_finite() {
            return;
        }
        let started = UNIX_EPOCH + Duration::from_secs_f64(origin.max(0.0));
        let file = match self.store.new_file(
            &self.recording_id,
            &self.room_id,
            &self.user_id,
            &kinds,
            &specs,
            started,
        ) {
            Ok(f) => f,
            Err(e) => return self.fail(e.to_string()),
        };
        let name = file
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        tracing::info!(recording.id = %self.recording_id, user.id = %self.user_id, file = %name, "recording to a new file");
        let mut map = HashMap::new();
        for (f, &i) in incoming.iter().enumerate() {
            map.insert(i, (f, i64::MIN, 0));
        }
        let with_video = incoming.iter().any(|&i| self.tracks[i].video);
        self.open = Some(Open {
            file,
            name,
            map,
            origin,
            with_video,
        });
        for p in std::mem::take(&mut self.waiting) {
            if self
                .open
                .as_ref()
                .is_some_and(|o| o.map.contains_key(&p.track))
            {
                self.write(p);
            }
        }
    }

    fn write(&mut self, p: Pending) {
        let Some(open) = &mut self.open else { return };
        let Some(entry) = open.map.get_mut(&p.track) else {
            return;
        };
        let clock = if self.tracks[p.track].video {
            90_000.0
        } else {
            48_000.0
        };
        if entry.1 == i64::MIN {
            // The track's place in the file: where its first sample falls
            // after the file's start; then its own timestamps.
            entry.1 = ((p.wall - open.origin) * clock).round() as i64;
            entry.2 = p.ts;
        }
        let dts = entry.1 + (p.ts - entry.2);
        let Ok(dts) = u64::try_from(dts) else { return };
        let pushed = open.file.push(
            entry.0,
            Sample {
                dts,
                data: p.data,
                sync: p.sync,
            },
        );
        if let Err(e) = pushed {
            self.fail(e.to_string());
        }
    }

    fn close(&mut self) {
        let Some(open) = self.open.take() else { return };
        match open.file.finish() {
            Ok(bytes) => self.store.end_file(
                &self.recording_id,
                &self.room_id,
                &self.user_id,
                &open.name,
                bytes,
            ),
            Err(e) => self.fail(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RecordingEvent;

    #[test]
    fn sequence_numbers_unwrap() {
        let mut u = Unwrap::default();
        assert_eq!(u.seq(65_534), 65_534);
        assert_eq!(u.seq(65_535), 65_535);
        assert_eq!(u.seq(1), 65_537);
        assert_eq!(u.seq(65_535), 65_535, "a late one stays before");
        assert_eq!(u.seq(2), 65_538);
    }

    #[test]
    fn a_recorded_stream_that_stops_is_reported_once() {
        let dir = std::env::temp_dir().join(format!("pilot-msu-silence-{}", std::process::id()));
        let (events, mut told) = tokio::sync::mpsc::unbounded_channel();
        let store =
            Arc::new(Store::new(dir.clone(), events).with_silence(Duration::from_millis(20)));
        let track = TrackSpec {
            pusher_id: "a".into(),
            ssrc: 7,
            rtx_ssrc: 0,
            codec: "opus".into(),
        };
        let recorder = Recorder::start(store, "rec", "r", "u", vec![track]);
        let first = told.blocking_recv();
        assert!(
            matches!(&first, Some(RecordingEvent { kind: EventKind::Failed { reason }, .. }) if reason.contains("no media")),
            "{first:?}"
        );
        recorder.finish();
        assert!(told.try_recv().is_err(), "said once");
        std::fs::remove_dir_all(&dir).ok();
    }
}
