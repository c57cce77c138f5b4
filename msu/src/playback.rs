//! Playback: a recorded user played into a room as a user of the
//! operator's choice (issue 30).
//!
//! The MSU holding the recording joins that user through its own link to
//! the center and pushes a video and an audio pusher (PROTOCOL.md §8: the
//! SFU's answer to browsers bundles both, and a video `rtpParam` needs a
//! non-zero `rtx_ssrc`). Each `pullRemoteStream` the center forwards for
//! that user adds a destination; the player sends the recorded RTP from the
//! hub's socket, paced by the samples' times, to every destination of each
//! track (so their RTCP comes back to the hub). It starts when the first
//! destination comes (or after [`AUDIENCE_WAIT`]), and leaves at the end
//! (or loops). A key-frame request from a destination restarts the video
//! at the last key frame: that frame and those after it go out at once,
//! stamped just after what was sent, so the decoder catches up to the
//! present picture (the recorder asks for a key frame every few seconds,
//! so the run is short).

use crate::hub::Hub;
use crate::record::Store;
use crate::record::fmp4::{Sample, TrackKind};
use crate::record::reader::Mp4Reader;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedSender;

/// How long a playback waits for its first destination before it plays
/// to nobody (the audience may come later and see it from then).
pub const AUDIENCE_WAIT: Duration = Duration::from_secs(30);
/// Most pictures re-sent from the last key frame on a key-frame request.
pub const CATCH_UP_PICTURES: usize = 250;
/// RTP payload size the player cuts H264 into (FU-A beyond it).
const MTU_PAYLOAD: usize = 1_100;
const VIDEO_PT: u8 = 108;
const RTX_PT: u8 = 109;
const AUDIO_PT: u8 = 111;
/// The pusher ids a played user publishes.
pub const VIDEO_PUSHER: &str = "video";
/// See [`VIDEO_PUSHER`].
pub const AUDIO_PUSHER: &str = "audio";

/// A playback as the center asks it (`playback`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlaybackSpec {
    /// Its id.
    pub playback_id: String,
    /// The recording.
    pub recording_id: String,
    /// Whose files are played.
    pub source_user_id: String,
    /// Into which room.
    pub room_id: String,
    /// As which user.
    pub user_id: String,
    /// Start again at the end, until stopped.
    #[serde(default, rename = "loop")]
    pub looped: bool,
}

/// What a player asks the link to send to the center.
#[derive(Debug, Clone, PartialEq)]
pub enum ToCenter {
    /// A protoo request (an error answer is logged).
    Request(&'static str, Value),
    /// A protoo notification.
    Notify(&'static str, Value),
}

/// What a running player shares with the link and the hub.
struct Playing {
    /// Destination -> the pushers it pulled.
    audience: Mutex<Vec<(SocketAddr, Vec<String>)>>,
    came: tokio::sync::Notify,
    keyframe: Arc<AtomicBool>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Its SSRCs, for the hub's feedback table.
    ssrcs: Mutex<Vec<u32>>,
}

/// (room, user) a playback plays as.
type PlayedUser = (String, String);

/// The playbacks this MSU runs.
pub struct Players {
    hub: Arc<Hub>,
    store: Arc<Store>,
    to_center: UnboundedSender<ToCenter>,
    /// Playback id -> the user it plays and its player.
    by_id: Mutex<HashMap<String, (PlayedUser, Arc<Playing>)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A number nobody else picked: the hasher's random keys.
fn random_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (h.finish() as u32).max(1)
}

impl Players {
    /// Players that send through `hub`, read `store` and speak to the
    /// center through `to_center`.
    pub fn new(hub: Arc<Hub>, store: Arc<Store>, to_center: UnboundedSender<ToCenter>) -> Self {
        Self {
            hub,
            store,
            to_center,
            by_id: Mutex::default(),
        }
    }

    /// How many playbacks run.
    pub fn running(&self) -> usize {
        lock(&self.by_id).len()
    }

    /// Starts `spec` (one running under its id already is left as it is:
    /// the center says it again after a reconnect).
    pub fn start(self: &Arc<Self>, spec: PlaybackSpec) {
        let mut all = lock(&self.by_id);
        if all.contains_key(&spec.playback_id) {
            return;
        }
        let playing = Arc::new(Playing {
            audience: Mutex::default(),
            came: tokio::sync::Notify::new(),
            keyframe: Arc::new(AtomicBool::new(false)),
            task: Mutex::new(None),
            ssrcs: Mutex::default(),
        });
        all.insert(
            spec.playback_id.clone(),
            (
                (spec.room_id.clone(), spec.user_id.clone()),
                playing.clone(),
            ),
        );
        drop(all);
        let players = self.clone();
        let running = playing.clone();
        let task = tokio::spawn(async move {
            let outcome = players.play(&spec, &running).await;
            let reason = match &outcome {
                Ok(()) => "ended".to_owned(),
                Err(e) => format!("failed: {e}"),
            };
            tracing::info!(playback.id = %spec.playback_id, room.id = %spec.room_id, user.id = %spec.user_id, %reason, "playback over");
            players.leave(&spec, &running, Some(&reason));
        });
        *lock(&playing.task) = Some(task);
    }

    /// Stops playback `id` (the center stopped it): the user leaves.
    pub fn stop(&self, id: &str) {
        let Some(((room_id, user_id), playing)) = lock(&self.by_id).remove(id) else {
            return;
        };
        if let Some(task) = lock(&playing.task).take() {
            task.abort();
        }
        self.unwatch(&playing);
        let _ = self.to_center.send(ToCenter::Notify(
            "userLeave",
            json!({"roomId": room_id, "userId": user_id}),
        ));
        tracing::info!(playback.id = id, room.id = %room_id, user.id = %user_id, "playback stopped");
    }

    /// A `pullRemoteStream` for one of the played users: a destination.
    /// Returns whether it was one.
    pub fn pulled(&self, room_id: &str, user_id: &str, addr: SocketAddr, pusher_id: &str) -> bool {
        let all = lock(&self.by_id);
        let Some((_, playing)) = all
            .values()
            .find(|((r, u), _)| r == room_id && u == user_id)
        else {
            return false;
        };
        let mut audience = lock(&playing.audience);
        match audience.iter_mut().find(|(a, _)| *a == addr) {
            Some((_, pushers)) => {
                if !pushers.iter().any(|p| p == pusher_id) {
                    pushers.push(pusher_id.to_owned());
                }
            }
            None => audience.push((addr, vec![pusher_id.to_owned()])),
        }
        playing.came.notify_one();
        true
    }

    fn unwatch(&self, playing: &Playing) {
        for ssrc in lock(&playing.ssrcs).drain(..) {
            self.hub.unwatch_feedback(ssrc);
        }
    }

    /// The played user leaves; the center hears why (`playbackEnded`).
    fn leave(&self, spec: &PlaybackSpec, playing: &Playing, reason: Option<&str>) {
        lock(&self.by_id).remove(&spec.playback_id);
        self.unwatch(playing);
        let _ = self.to_center.send(ToCenter::Notify(
            "userLeave",
            json!({"roomId": spec.room_id, "userId": spec.user_id}),
        ));
        if let Some(reason) = reason {
            let _ = self.to_center.send(ToCenter::Notify(
                "playbackEnded",
                json!({"playbackId": spec.playback_id, "reason": reason}),
            ));
        }
    }

    async fn play(&self, spec: &PlaybackSpec, playing: &Playing) -> Result<(), String> {
        if !crate::record::valid_id(&spec.recording_id) {
            return Err(format!("not a recording id: {:?}", spec.recording_id));
        }
        let manifest = self
            .store
            .manifest(&spec.recording_id)
            .ok_or_else(|| format!("recording {} is not on this MSU", spec.recording_id))?;
        let dir = self.store.dir_of(&spec.recording_id);
        let files: Vec<std::path::PathBuf> = manifest
            .files
            .iter()
            .filter(|f| f.user_id == spec.source_user_id)
            .map(|f| dir.join(&f.file))
            .collect();
        if files.is_empty() {
            return Err(format!(
                "user {} has no file in recording {}",
                spec.source_user_id, spec.recording_id
            ));
        }
        let video = Track::new(true);
        let audio = Track::new(false);
        *lock(&playing.ssrcs) = vec![video.ssrc, video.rtx_ssrc, audio.ssrc];
        for ssrc in [video.ssrc, audio.ssrc] {
            self.hub.watch_feedback(ssrc, playing.keyframe.clone());
        }
        let _ = self.to_center.send(ToCenter::Request(
            "join",
            json!({"roomId": spec.room_id, "userId": spec.user_id, "userName": spec.user_id}),
        ));
        let _ = self.to_center.send(ToCenter::Notify(
            "push",
            json!({"roomId": spec.room_id, "userId": spec.user_id, "userName": spec.user_id,
                   "publishers": [
                       {"pusherId": VIDEO_PUSHER, "rtpParam": video.rtp_param()},
                       {"pusherId": AUDIO_PUSHER, "rtpParam": audio.rtp_param()}]}),
        ));
        // Played from when someone watches.
        let _ = tokio::time::timeout(AUDIENCE_WAIT, playing.came.notified()).await;
        let mut sender = Sender {
            hub: &self.hub,
            playing,
            video,
            audio,
            catch_up: Vec::new(),
        };
        let start = tokio::time::Instant::now();
        loop {
            for file in &files {
                sender.play_file(file, start).await?;
            }
            if !spec.looped {
                return Ok(());
            }
        }
    }
}

/// One outgoing track: its SSRCs, sequence numbers and timestamps.
struct Track {
    video: bool,
    ssrc: u32,
    rtx_ssrc: u32,
    seq: u16,
    ts_base: u32,
    /// Where the current file's samples start, in the track's clock.
    offset: u64,
    /// The last timestamp sent (after its offset).
    last: u64,
}

impl Track {
    fn new(video: bool) -> Self {
        Self {
            video,
            ssrc: random_u32(),
            rtx_ssrc: if video { random_u32() } else { 0 },
            seq: random_u32() as u16,
            ts_base: random_u32(),
            offset: 0,
            last: 0,
        }
    }

    fn clock(&self) -> u64 {
        if self.video { 90_000 } else { 48_000 }
    }

    /// The `rtpParam` the real SFU reads (PROTOCOL.md §8).
    fn rtp_param(&self) -> Value {
        if self.video {
            json!({"av_type": 2, "codec": "H264",
                   "fmtp_param": "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
                   "rtcp_features": ["nack", "nack pli", "goog-remb", "transport-cc"],
                   "ssrc": self.ssrc, "payload_type": VIDEO_PT, "clock_rate": 90_000,
                   "rtx_ssrc": self.rtx_ssrc, "rtx_payload_type": RTX_PT, "use_nack": true})
        } else {
            json!({"av_type": 1, "codec": "opus", "fmtp_param": "minptime=10;useinbandfec=1",
                   "rtcp_features": ["transport-cc"], "ssrc": self.ssrc,
                   "payload_type": AUDIO_PT, "clock_rate": 48_000, "rtx_ssrc": 0,
                   "rtx_payload_type": 0, "use_nack": false})
        }
    }

    /// One RTP packet of this track.
    fn packet(&mut self, ts: u64, marker: bool, payload: &[u8]) -> Vec<u8> {
        let pt = if self.video { VIDEO_PT } else { AUDIO_PT };
        let mut p = Vec::with_capacity(12 + payload.len());
        p.push(0x80);
        p.push(pt | if marker { 0x80 } else { 0 });
        p.extend_from_slice(&self.seq.to_be_bytes());
        p.extend_from_slice(&self.ts_base.wrapping_add(ts as u32).to_be_bytes());
        p.extend_from_slice(&self.ssrc.to_be_bytes());
        p.extend_from_slice(payload);
        self.seq = self.seq.wrapping_add(1);
        self.last = ts;
        p
    }
}

/// The payloads of one picture (length-prefixed NAL units): a single NAL
/// unit packet each, or FU-A fragments for a large one.
pub fn h264_payloads(picture: &[u8], max: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = picture;
    while rest.len() >= 4 {
        let size = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let Some(nal) = rest.get(4..4 + size) else {
            break;
        };
        rest = &rest[4 + size..];
        let Some((&header, body)) = nal.split_first() else {
            continue;
        };
        if nal.len() <= max {
            out.push(nal.to_vec());
            continue;
        }
        let indicator = (header & 0xe0) | 28;
        let chunks: Vec<&[u8]> = body.chunks(max - 2).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let mut fu = header & 0x1f;
            if i == 0 {
                fu |= 0x80;
            }
            if i + 1 == chunks.len() {
                fu |= 0x40;
            }
            let mut p = Vec::with_capacity(chunk.len() + 2);
            p.push(indicator);
            p.push(fu);
            p.extend_from_slice(chunk);
            out.push(p);
        }
    }
    out
}

/// Sends a playback's samples.
struct Sender<'a> {
    hub: &'a Hub,
    playing: &'a Playing,
    video: Track,
    audio: Track,
    /// The pictures since the last key frame (at most
    /// [`CATCH_UP_PICTURES`]): what a key-frame request re-sends.
    catch_up: Vec<Vec<u8>>,
}

impl Sender<'_> {
    async fn play_file(
        &mut self,
        path: &std::path::Path,
        start: tokio::time::Instant,
    ) -> Result<(), String> {
        let mut reader = Mp4Reader::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let kinds = reader.tracks().to_vec();
        // This file's samples go on from where the last one stopped.
        let now = start.elapsed();
        for t in [&mut self.video, &mut self.audio] {
            let at = (now.as_secs_f64() * t.clock() as f64) as u64;
            t.offset = at.max(t.last + 1);
        }
        while let Some(fragment) = reader.next_fragment() {
            let mut samples: Vec<(f64, bool, Sample)> = fragment
                .into_iter()
                .filter_map(|(i, s)| {
                    let video = matches!(kinds.get(i)?, TrackKind::H264 { .. });
                    let clock = if video { 90_000.0 } else { 48_000.0 };
                    Some((s.dts as f64 / clock, video, s))
                })
                .collect();
            samples.sort_by(|a, b| a.0.total_cmp(&b.0));
            for (_, video, sample) in samples {
                let track = if video { &self.video } else { &self.audio };
                let ts = track.offset + sample.dts;
                let due = start + Duration::from_secs_f64(ts as f64 / track.clock() as f64);
                tokio::time::sleep_until(due).await;
                if self.playing.keyframe.swap(false, Ordering::Relaxed) {
                    self.catch_up().await;
                }
                if video {
                    self.send_picture(&sample, ts.max(self.video.last + 1));
                } else {
                    let ts = ts.max(self.audio.last + 1);
                    let p = self.audio.packet(ts, true, &sample.data);
                    self.send(&p, AUDIO_PUSHER);
                }
            }
        }
        Ok(())
    }

    fn send_picture(&mut self, sample: &Sample, ts: u64) {
        if sample.sync {
            self.catch_up.clear();
        }
        if self.catch_up.len() < CATCH_UP_PICTURES {
            self.catch_up.push(sample.data.clone());
        }
        self.send_video(&sample.data, ts);
    }

    fn send_video(&mut self, picture: &[u8], ts: u64) {
        let payloads = h264_payloads(picture, MTU_PAYLOAD);
        let n = payloads.len();
        for (i, payload) in payloads.iter().enumerate() {
            let p = self.video.packet(ts, i + 1 == n, payload);
            self.send(&p, VIDEO_PUSHER);
        }
    }

    /// Re-sends the pictures since the last key frame, each stamped one
    /// tick after the last sent, paced a little so that no socket buffer
    /// overflows.
    async fn catch_up(&mut self) {
        let pictures = std::mem::take(&mut self.catch_up);
        for (i, picture) in pictures.iter().enumerate() {
            let ts = self.video.last + 1;
            self.send_video(picture, ts);
            if i % 8 == 7 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        self.catch_up = pictures;
        self.video.offset += self.catch_up.len() as u64;
    }

    fn send(&self, packet: &[u8], pusher: &str) {
        let audience = lock(&self.playing.audience);
        for (addr, pushers) in audience.iter() {
            if pushers.iter().any(|p| p == pusher) {
                self.hub.send_raw(packet, *addr);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_nal_unit_is_cut_into_fu_a_and_a_small_one_sent_whole() {
        let mut picture = Vec::new();
        for nal in [vec![0x67u8, 1, 2], vec![0x65u8; 2_500]] {
            picture.extend_from_slice(&(nal.len() as u32).to_be_bytes());
            picture.extend_from_slice(&nal);
        }
        let p = h264_payloads(&picture, 1_000);
        assert_eq!(p[0], vec![0x67, 1, 2]);
        assert_eq!(p.len(), 1 + 3, "2,499 bytes in fragments of 998");
        assert_eq!((p[1][0], p[1][1]), (0x7c, 0x85), "FU-A, start, type 5");
        assert_eq!(p[3][1], 0x45, "end");
        // Put back together by the recorder's depacketizer.
        let mut d = crate::record::h264::Depacketizer::default();
        let mut au = None;
        for (i, payload) in p.iter().enumerate() {
            au = d.push(false, 9, i + 1 == p.len(), payload).or(au);
        }
        let au = au.unwrap_or_else(|| panic!("a picture"));
        assert_eq!(au.nals[1], vec![0x65u8; 2_500]);
    }
}
