//! Recording through the hub, judged by real `ffprobe`: real `ffmpeg`
//! plays a publisher's SFU, the hub writes the publisher into a fragmented
//! MP4 file, and ffprobe reads its codecs, frames and duration. Tests that
//! need ffmpeg say so and pass without it (CI installs it).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use common::*;
use pilot_msu::hub::{Hub, RelaySpec, Track};
use pilot_msu::record::{EventKind, Manifest, RecordingEvent, Store};
use serde_json::Value;
use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// What ffprobe reads of a file: (codec, frames) per stream, and the
/// duration.
fn ffprobe(path: &Path) -> (Vec<(String, u64)>, f64) {
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-count_frames", "-of", "json"])
        .args([
            "-show_entries",
            "stream=codec_name,nb_read_frames,width,height:format=duration",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ffprobe {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let streams = v["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["codec_name"].as_str().unwrap_or_default().to_owned(),
                s["nb_read_frames"]
                    .as_str()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0),
            )
        })
        .collect();
    let duration = v["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .unwrap_or(0.0);
    (streams, duration)
}

fn spec(recording_id: &str) -> RelaySpec {
    RelaySpec {
        key: ("r".into(), "u1".into()),
        tracks: vec![
            Track {
                pusher_id: "cam".into(),
                ssrc: VIDEO,
                rtx_ssrc: VIDEO_RTX,
                codec: "H264".into(),
            },
            Track {
                pusher_id: "mic".into(),
                ssrc: AUDIO,
                rtx_ssrc: 0,
                codec: "opus".into(),
            },
        ],
        destinations: Vec::new(),
        recording_id: recording_id.into(),
    }
}

/// A hub recording publisher u1 of room r into `dir` as recording
/// `rec-1`, while real ffmpeg plays its SFU for `secs` seconds; returns the
/// pictures and Opus frames ffmpeg sent, once every file is closed.
async fn record_ffmpeg(
    dir: &Path,
    secs: u32,
) -> (
    u64,
    u64,
    tokio::sync::mpsc::UnboundedReceiver<RecordingEvent>,
) {
    let (events, told) = tokio::sync::mpsc::unbounded_channel();
    let store = Arc::new(Store::new(dir.to_owned(), events));
    let hub = Arc::new(
        Hub::bind(
            "127.0.0.1".parse().unwrap(),
            42_000,
            42_999,
            512,
            Duration::from_millis(500),
            Some(store.clone()),
        )
        .await
        .unwrap(),
    );
    let media = hub.local_addr().unwrap();
    let serving = {
        let hub = hub.clone();
        tokio::spawn(async move { hub.run().await })
    };
    hub.apply(spec("rec-1"));
    assert_eq!(hub.recording(), 1);
    // The publisher's SFU: what ffmpeg sends, counted, on to the hub.
    let relay = udp().await;
    let sent = tap(relay.clone(), Some(media));
    ffmpeg_publishes(port(&relay), secs).await;
    let (frames, packets) = {
        let s = sent.lock().unwrap();
        // A picture is every packet of one RTP timestamp; ffmpeg's Opus
        // packets are one frame each.
        let video: HashSet<u32> = s.rtp[&VIDEO].iter().map(|p| p.2).collect();
        (video.len() as u64, s.rtp[&AUDIO].len() as u64)
    };
    let total = sent
        .lock()
        .unwrap()
        .rtp
        .values()
        .map(Vec::len)
        .sum::<usize>() as u64;
    until("the hub took every packet", || {
        hub.stats()
            .rtp_in
            .load(std::sync::atomic::Ordering::Relaxed)
            >= total
    })
    .await;
    let finishing = hub.clone();
    tokio::task::spawn_blocking(move || finishing.finish_recordings())
        .await
        .unwrap();
    serving.abort();
    (frames, packets, told)
}

/// Issue 30: a recorded publisher becomes one file with its video and
/// audio that ffprobe reads with the right codecs, as many frames as were
/// sent (within 5 %) and the duration sent (within 0.5 s); the manifest
/// names the file, its tracks and when it started and ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_publisher_is_a_file_ffprobe_reads_whole() {
    bounded(async {
        if !ffmpeg_available() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (frames, packets, mut told) = record_ffmpeg(dir.path(), 4).await;

        let manifest: Manifest = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("rec-1/manifest.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(manifest.room_id, "r");
        assert_eq!(manifest.files.len(), 1, "{manifest:?}");
        let file = &manifest.files[0];
        assert_eq!(
            (file.user_id.as_str(), file.file.as_str()),
            ("u1", "u1-1.mp4")
        );
        let kinds: Vec<(&str, &str)> = file
            .tracks
            .iter()
            .map(|t| (t.kind.as_str(), t.codec.as_str()))
            .collect();
        assert_eq!(kinds, [("video", "H264"), ("audio", "opus")]);
        assert_eq!(
            (file.tracks[0].width, file.tracks[0].height),
            (Some(320), Some(240))
        );
        assert!(file.ended_at_unix_ms.unwrap() >= file.started_at_unix_ms);

        let (streams, duration) = ffprobe(&dir.path().join("rec-1/u1-1.mp4"));
        assert_eq!(streams.len(), 2, "{streams:?}");
        assert_eq!(streams[0].0, "h264");
        assert_eq!(streams[1].0, "opus");
        eprintln!(
            "sent {frames} pictures, {packets} Opus frames; ffprobe read {streams:?}, {duration} s"
        );
        let near = |got: u64, want: u64| (got as f64 - want as f64).abs() <= want as f64 * 0.05;
        assert!(
            near(streams[0].1, frames),
            "video frames {} of {frames}",
            streams[0].1
        );
        assert!(
            near(streams[1].1, packets),
            "audio frames {} of {packets}",
            streams[1].1
        );
        assert!((duration - 4.0).abs() <= 0.5, "duration {duration}");

        // The center was told: the file started, then ended.
        let first = told.recv().await.unwrap();
        assert!(
            matches!(first.kind, EventKind::FileStarted { .. }),
            "{first:?}"
        );
        let second = told.recv().await.unwrap();
        assert!(
            matches!(second.kind, EventKind::FileEnded { bytes, .. } if bytes > 10_000),
            "{second:?}"
        );
    })
    .await;
}

/// Issue 30: the recorded file plays in Chromium: a `<video>` element
/// reaches its end, at the picture size sent, with the frames counted by
/// `getVideoPlaybackQuality` within 5 % of those sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and tests/interop/node_modules (npm ci); run by .ci/run"]
async fn a_recording_plays_to_its_end_in_chromium() {
    bounded(async {
        if !ffmpeg_available() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (frames, _, _) = record_ffmpeg(dir.path(), 4).await;
        let file = dir.path().join("rec-1/u1-1.mp4");
        let out = tokio::process::Command::new("node")
            .arg("play_recording.js")
            .arg(&file)
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/interop"))
            .kill_on_drop(true)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "node: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
        eprintln!("Chromium played {seen}");
        assert_eq!(seen["ended"], true, "{seen}");
        assert_eq!(
            (seen["width"].as_u64(), seen["height"].as_u64()),
            (Some(320), Some(240))
        );
        let duration = seen["duration"].as_f64().unwrap();
        assert!((duration - 4.0).abs() <= 0.5, "duration {duration}");
        let shown = seen["totalVideoFrames"].as_u64().unwrap();
        assert!(
            (shown as f64 - frames as f64).abs() <= frames as f64 * 0.05,
            "Chromium counted {shown} frames of {frames}"
        );
    })
    .await;
}
