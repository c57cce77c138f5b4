//! Recording through the hub, judged by real `ffprobe`: real `ffmpeg`
//! plays a publisher's SFU, the hub writes the publisher into a fragmented
//! MP4 file, and ffprobe reads its codecs, frames and duration. Tests that
//! need ffmpeg say so and pass without it (CI installs it).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use common::*;
use pilot_msu::hub::{Hub, RelaySpec, Track};
use pilot_msu::record::{EventKind, Manifest, RecordingEvent, Store};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;

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

/// What ffmpeg sent, seen by `sent`: (pictures, Opus frames), once `hub`
/// took every packet of it.
async fn took_all(hub: &Hub, sent: &std::sync::Mutex<Seen>) -> (u64, u64) {
    let (frames, packets, total) = {
        let s = sent.lock().unwrap();
        // A picture is every packet of one RTP timestamp; ffmpeg's Opus
        // packets are one frame each.
        let video: HashSet<u32> = s.rtp[&VIDEO].iter().map(|p| p.2).collect();
        let total: usize = s.rtp.values().map(Vec::len).sum();
        (video.len() as u64, s.rtp[&AUDIO].len() as u64, total as u64)
    };
    until("the hub took every packet", || {
        hub.stats()
            .rtp_in
            .load(std::sync::atomic::Ordering::Relaxed)
            >= total
    })
    .await;
    (frames, packets)
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
    let (frames, packets, told, _) = record_ffmpeg_losing(dir, secs, None).await;
    (frames, packets, told)
}

/// [`record_ffmpeg`], the publisher's SFU withholding video packet number
/// `lose` (counted from 0) until the hub asks for it (NACK), and then
/// sending it as RTX (RFC 4588), as the real SFU answers from its send
/// history; also returns how many RTX packets it sent.
async fn record_ffmpeg_losing(
    dir: &Path,
    secs: u32,
    lose: Option<usize>,
) -> (
    u64,
    u64,
    tokio::sync::mpsc::UnboundedReceiver<RecordingEvent>,
    u64,
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
    let rtx_sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sent = match lose {
        None => tap(relay.clone(), Some(media)),
        Some(n) => lossy_sfu(relay.clone(), media, n, rtx_sent.clone()),
    };
    ffmpeg_publishes(port(&relay), secs).await;
    let (frames, packets) = took_all(&hub, &sent).await;
    let finishing = hub.clone();
    tokio::task::spawn_blocking(move || finishing.finish_recordings())
        .await
        .unwrap();
    serving.abort();
    let rtx = rtx_sent.load(std::sync::atomic::Ordering::Relaxed);
    (frames, packets, told, rtx)
}

/// A publisher's SFU between ffmpeg and the hub at `to` that loses video
/// packet `lose` on the way and answers NACKs from its history with RTX
/// (payload type 109 on `VIDEO_RTX`: the original sequence number, then
/// the original payload). Counts what ffmpeg sent, as [`tap`] does.
fn lossy_sfu(
    socket: Arc<UdpSocket>,
    to: SocketAddr,
    lose: usize,
    rtx_sent: Arc<std::sync::atomic::AtomicU64>,
) -> Arc<std::sync::Mutex<Seen>> {
    let seen = Arc::new(std::sync::Mutex::new(Seen::default()));
    let s = seen.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        let mut history: std::collections::HashMap<u16, Vec<u8>> = Default::default();
        let (mut video, mut rtx_seq) = (0usize, 0u16);
        while let Ok((n, _)) = socket.recv_from(&mut buf).await {
            let p = buf[..n].to_vec();
            if pilot_msu::hub::is_rtcp(&p) {
                // A NACK (RTPFB, FMT 1) for the video: each PID and its BLP.
                if p[1] != 205 || p[0] & 0x1f != 1 {
                    continue;
                }
                let mut asked = Vec::new();
                for fci in p[12..].chunks_exact(4) {
                    let pid = u16::from_be_bytes([fci[0], fci[1]]);
                    let blp = u16::from_be_bytes([fci[2], fci[3]]);
                    asked.push(pid);
                    asked.extend(
                        (0..16)
                            .filter(|b| blp & (1 << b) != 0)
                            .map(|b| pid.wrapping_add(b + 1)),
                    );
                }
                for seq in asked {
                    let Some(original) = history.get(&seq) else {
                        continue;
                    };
                    let mut rtx = vec![0x80, (original[1] & 0x80) | 109];
                    rtx.extend_from_slice(&rtx_seq.to_be_bytes());
                    rtx.extend_from_slice(&original[4..8]);
                    rtx.extend_from_slice(&VIDEO_RTX.to_be_bytes());
                    rtx.extend_from_slice(&seq.to_be_bytes());
                    rtx.extend_from_slice(&original[12..]);
                    rtx_seq = rtx_seq.wrapping_add(1);
                    let _ = socket.send_to(&rtx, to).await;
                    rtx_sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                continue;
            }
            let Some((ssrc, seq)) = s.lock().unwrap().note_rtp(&p) else {
                continue;
            };
            if ssrc == VIDEO {
                history.insert(seq, p.clone());
                video += 1;
                if video - 1 == lose {
                    continue; // lost on the way
                }
            }
            let _ = socket.send_to(&p, to).await;
        }
    });
    seen
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

/// SFU A joins publisher u1 into room r and pushes its video and audio;
/// returns once the room has the MSU.
async fn publisher_in_room(center: &pilot_center::server::Server) -> Peer {
    let mut a = Peer::connect(center, "sfu-a").await;
    a.request(
        "join",
        json!({"roomId": "r", "userId": "u1", "userName": "u1"}),
    )
    .await;
    push_u1(&mut a).await;
    a.request("echo", json!({})).await;
    let c = center.center().clone();
    until("the room has the MSU", || {
        c.get_room("r").is_ok_and(|r| r.msu_id == "hub-1")
    })
    .await;
    a
}

/// The recording's files as the center lists them, once every one is
/// closed (the MSU said so).
async fn files_closed(
    center: &pilot_center::server::Server,
    id: &str,
    at_least: usize,
) -> Vec<pilot_center::proto::RecordingFile> {
    let c = center.center().clone();
    let listed = || {
        c.list_recordings("")
            .into_iter()
            .find(|r| r.recording_id == id)
            .map(|r| r.files)
            .unwrap_or_default()
    };
    until("the MSU closed every file and said so", || {
        let files = listed();
        files.len() >= at_least && files.iter().all(|f| f.closed)
    })
    .await;
    listed()
}

/// Issue 30, through the center as an operator does it: recording starts
/// on a room whose publisher is on SFU A (A is asked to send each track to
/// the MSU), real ffmpeg plays A, the recording stops; the center lists the
/// file the MSU closed with its size, ffprobe reads it whole, and deleting
/// the recording removes its files. Without an MSU, or twice, or stopping
/// what does not run, the caller gets a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_recorded_through_the_center_is_listed_read_and_deleted() {
    bounded(async {
        if !ffmpeg_available() {
            return;
        }
        let center = center().await;
        let c = center.center().clone();
        // No MSU yet: refused, and nothing is left behind.
        let mut early = Peer::connect(&center, "sfu-early").await;
        early
            .request(
                "join",
                json!({"roomId": "bare", "userId": "x", "userName": "x"}),
            )
            .await;
        let refused = c.start_recording("bare", "").await.unwrap_err();
        assert_eq!(refused.protoo_code(), 412, "{refused}");
        assert!(refused.to_string().contains("no MSU"), "{refused}");
        assert!(c.list_recordings("").is_empty());

        let dir = tempfile::tempdir().unwrap();
        let (msu, _stop) = msu_with(
            &center,
            &msu_yaml_recording(&center, 43_000, 43_999, dir.path()),
        )
        .await;
        let mut a = publisher_in_room(&center).await;
        let started = c.start_recording("r", "meeting-1").await.unwrap();
        assert_eq!(started.msu_id, "hub-1");
        assert_eq!(
            started.state(),
            pilot_center::proto::RecordingState::Recording
        );
        let again = c.start_recording("r", "").await.unwrap_err();
        assert_eq!(again.protoo_code(), 409, "{again}");
        // A sends each track to the hub, which records it.
        asked_to_send_to(&mut a, msu.media).await;
        until("the MSU records u1", || msu.hub.recording() == 1).await;

        let relay = udp().await;
        let sent = tap(relay.clone(), Some(msu.media));
        ffmpeg_publishes(port(&relay), 3).await;
        let (frames, _) = took_all(&msu.hub, &sent).await;
        let stopped = c.stop_recording("r").await.unwrap();
        assert_eq!(
            stopped.state(),
            pilot_center::proto::RecordingState::Stopped
        );
        assert_eq!(stopped.stop_reason, "stopped");
        let files = files_closed(&center, "meeting-1", 1).await;
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(
            (files[0].user_id.as_str(), files[0].file.as_str()),
            ("u1", "u1-1.mp4")
        );
        let path = dir.path().join("meeting-1/u1-1.mp4");
        assert_eq!(files[0].bytes, std::fs::metadata(&path).unwrap().len());
        let (streams, duration) = ffprobe(&path);
        assert_eq!(
            streams.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(),
            ["h264", "opus"]
        );
        assert!(
            (streams[0].1 as f64 - frames as f64).abs() <= frames as f64 * 0.05,
            "video frames {} of {frames}",
            streams[0].1
        );
        assert!((duration - 3.0).abs() <= 0.5, "duration {duration}");
        let not_running = c.stop_recording("r").await.unwrap_err();
        assert_eq!(not_running.protoo_code(), 412, "{not_running}");

        // Deleted: forgotten by the center, its files removed by the MSU.
        assert!(c.delete_recording("meeting-1").await.unwrap());
        assert!(c.list_recordings("").is_empty());
        until("the MSU removed the files", || {
            !dir.path().join("meeting-1").exists()
        })
        .await;
        let gone = c.delete_recording("meeting-1").await.unwrap_err();
        assert_eq!(gone.protoo_code(), 404, "{gone}");
    })
    .await;
}

/// Issue 30: `kill -9` of the MSU mid-recording and its return under its
/// identity on the same address: the file it was writing stays readable up
/// to its last fragment, and the recording goes on in a new file of the
/// same recording (the center gives the MSU its relays again, recording id
/// included); the manifest lists both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_msu_killed_mid_recording_leaves_a_readable_file_and_records_on() {
    bounded(async {
        if !ffmpeg_available() {
            return;
        }
        let center = center().await;
        let c = center.center().clone();
        let media_port = free_udp_port();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("msu.yaml");
        let recordings = dir.path().join("recordings");
        std::fs::write(
            &config,
            msu_yaml_recording(&center, media_port, media_port, &recordings),
        )
        .unwrap();
        let spawn = || spawn_msu(&config);
        let mut msu = spawn();
        registered(&center).await;
        let media: std::net::SocketAddr = format!("127.0.0.1:{media_port}").parse().unwrap();
        let mut a = publisher_in_room(&center).await;
        c.start_recording("r", "kept").await.unwrap();
        asked_to_send_to(&mut a, media).await;

        // ffmpeg plays A for 6 s, sending on to the MSU's address whether
        // it is there or not (as the real SFU does).
        let relay = udp().await;
        let _sent = tap(relay.clone(), Some(media));
        let playing = tokio::spawn(ffmpeg_publishes(port(&relay), 6));
        let first = recordings.join("kept/u1-1.mp4");
        until("the first file has fragments", || {
            std::fs::metadata(&first).is_ok_and(|m| m.len() > 20_000)
        })
        .await;
        msu.start_kill().unwrap();
        msu.wait().await.unwrap();
        until("the center sees the MSU gone", || c.list_msus().is_empty()).await;
        let mut msu = spawn();
        registered(&center).await;
        let second = recordings.join("kept/u1-2.mp4");
        until("the MSU records on into a new file", || {
            std::fs::metadata(&second).is_ok_and(|m| m.len() > 20_000)
        })
        .await;
        playing.await.unwrap();
        c.stop_recording("r").await.unwrap();
        let files = files_closed(&center, "kept", 2).await;
        let names: Vec<&str> = files.iter().map(|f| f.file.as_str()).collect();
        assert_eq!(names, ["u1-1.mp4", "u1-2.mp4"], "{files:?}");
        // The killed one was closed as it was on disk by the MSU back.
        assert_eq!(files[0].bytes, std::fs::metadata(&first).unwrap().len());
        for path in [&first, &second] {
            let (streams, duration) = ffprobe(path);
            let kinds: Vec<&str> = streams.iter().map(|s| s.0.as_str()).collect();
            assert_eq!(kinds, ["h264", "opus"], "{}", path.display());
            assert!(
                streams.iter().all(|s| s.1 > 10) && duration > 0.5,
                "{}: {streams:?} {duration} s",
                path.display()
            );
        }
        let manifest: Manifest = serde_json::from_str(
            &std::fs::read_to_string(recordings.join("kept/manifest.json")).unwrap(),
        )
        .unwrap();
        let parts: Vec<(&str, bool, bool)> = manifest
            .files
            .iter()
            .map(|f| (f.file.as_str(), f.ended_at_unix_ms.is_some(), f.interrupted))
            .collect();
        assert_eq!(parts, [("u1-1.mp4", true, true), ("u1-2.mp4", true, false)]);
        msu.start_kill().unwrap();
    })
    .await;
}

/// A center and an MSU (media ports from `ports`) that recorded u1 of room
/// r, played by real ffmpeg for `secs` seconds, as recording `id`: the
/// recording is stopped and its file closed.
async fn recorded_room(
    id: &str,
    ports: u16,
    secs: u32,
) -> (
    pilot_center::server::Server,
    tempfile::TempDir,
    (pilot_msu::Msu, tokio_util::sync::CancellationToken),
) {
    let center = center().await;
    let c = center.center().clone();
    let dir = tempfile::tempdir().unwrap();
    let yaml = msu_yaml_recording(&center, ports, ports + 999, dir.path());
    let (msu, stop) = msu_with(&center, &yaml).await;
    let mut a = publisher_in_room(&center).await;
    c.start_recording("r", id).await.unwrap();
    asked_to_send_to(&mut a, msu.media).await;
    let relay = udp().await;
    let _sent = tap(relay.clone(), Some(msu.media));
    ffmpeg_publishes(port(&relay), secs).await;
    c.stop_recording("r").await.unwrap();
    files_closed(&center, id, 1).await;
    (center, dir, (msu, stop))
}

/// A viewer's SFU, holding user `viewer` of room r2.
async fn viewer(center: &pilot_center::server::Server) -> Peer {
    let mut b = Peer::connect(center, "sfu-b").await;
    b.request(
        "join",
        json!({"roomId": "r2", "userId": "viewer", "userName": "viewer"}),
    )
    .await;
    b
}

/// Two free UDP ports `p` and `p + 2` (with `p + 1` and `p + 3` free for
/// ffmpeg's RTCP), found by binding.
fn four_free_ports() -> u16 {
    for p in (31_000..39_000).step_by(4) {
        let all = (0..4).map(|i| std::net::UdpSocket::bind(("127.0.0.1", p + i)));
        if all.collect::<Result<Vec<_>, _>>().is_ok() {
            return p;
        }
    }
    panic!("no four free ports");
}

/// Issue 30: a recording played into another room as a user of the
/// operator's choice: the MSU joins it and pushes a video and an audio
/// pusher (a non-zero `rtx_ssrc` on the video), a viewer's SFU pulls both
/// to ports where real ffmpeg receives them with an SDP file, and ffmpeg
/// decodes at least 90 % of the recorded pictures; at the end the user
/// leaves and the playback is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_played_into_a_room_is_decoded_by_ffmpeg() {
    bounded(async {
        if !ffmpeg_available() {
            return;
        }
        let (center, dir, (msu, _stop)) = recorded_room("talk", 44_000, 3).await;
        let c = center.center().clone();
        let (streams, _) = ffprobe(&dir.path().join("talk/u1-1.mp4"));
        let recorded = streams[0].1;
        let mut b = viewer(&center).await;
        let played = c
            .start_playback(pilot_center::proto::StartPlaybackRequest {
                recording_id: "talk".into(),
                room_id: "r2".into(),
                user_id: "replay".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!((played.source_user_id.as_str(), played.msu_id.as_str()), ("u1", "hub-1"));
        let pushed = b.expect("newPusher").await;
        assert_eq!(pushed["userId"], json!("replay"), "{pushed}");
        let pushers = pushed["pushers"].as_array().unwrap();
        let ids: Vec<&str> = pushers.iter().filter_map(|p| p["pusherId"].as_str()).collect();
        assert_eq!(ids, ["video", "audio"]);
        let video = &pushers[0]["rtpParam"];
        assert_eq!(video["codec"], json!("H264"));
        assert_ne!(video["rtx_ssrc"], json!(0), "Chrome refuses an FID group with 0");
        let audio = &pushers[1]["rtpParam"];
        assert_eq!(audio["codec"], json!("opus"));

        // ffmpeg receives what B's SFU would, described by an SDP file.
        let p = four_free_ports();
        let sdp = dir.path().join("play.sdp");
        std::fs::write(
            &sdp,
            format!(
                "v=0\no=- 0 0 IN IP4 127.0.0.1\ns=playback\nc=IN IP4 127.0.0.1\nt=0 0\n\
                 m=video {p} RTP/AVP 108\na=rtpmap:108 H264/90000\na=fmtp:108 packetization-mode=1\n\
                 m=audio {} RTP/AVP 111\na=rtpmap:111 opus/48000/2\n",
                p + 2
            ),
        )
        .unwrap();
        let ffmpeg = tokio::process::Command::new("ffmpeg")
            .args(["-hide_banner", "-nostdin", "-protocol_whitelist", "file,udp,rtp"])
            .arg("-i")
            .arg(&sdp)
            .args(["-map", "0:v", "-f", "null", "-"])
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        until("ffmpeg listens", || {
            std::net::UdpSocket::bind(("127.0.0.1", p)).is_err()
        })
        .await;
        let pull_to = |port: u16, pusher: &serde_json::Value| {
            json!({"roomId": "r2", "pusher_user_id": "replay", "udp_ip": "127.0.0.1", "udp_port": port,
                   "mediaType": if pusher["pusherId"] == json!("video") { "video" } else { "audio" },
                   "pushInfo": pusher})
        };
        b.notify("pullRemoteStream", pull_to(p, &pushers[0])).await;
        b.notify("pullRemoteStream", pull_to(p + 2, &pushers[1])).await;
        until("the playback ends", || c.list_playbacks().is_empty()).await;
        let left = b.expect("userLeave").await;
        assert_eq!(left["userId"], json!("replay"), "{left}");

        // ffmpeg stops on SIGINT and says how many pictures it decoded.
        let pid = ffmpeg.id().unwrap().to_string();
        std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap();
        let out = ffmpeg.wait_with_output().await.unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        let decoded: u64 = log
            .rsplit("frame=")
            .next()
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        eprintln!("recorded {recorded} pictures; ffmpeg decoded {decoded} of the playback");
        assert!(
            decoded as f64 >= recorded as f64 * 0.9,
            "ffmpeg decoded {decoded} of {recorded}: {log}"
        );
        assert!(msu.players.running() == 0);
    })
    .await;
}

/// Packets with when they arrived.
type Arrivals = Vec<(tokio::time::Instant, Vec<u8>)>;

/// Whether `p` (RTP) starts an IDR picture: an IDR or SPS NAL unit, alone,
/// in a STAP-A, or the first FU-A fragment of one.
fn starts_key_picture(p: &[u8]) -> bool {
    let Some(&first) = p.get(12) else {
        return false;
    };
    match first & 0x1f {
        5 | 7 => true,
        28 => p.get(13).is_some_and(|fu| fu & 0x80 != 0 && fu & 0x1f == 5),
        _ => false,
    }
}

/// Issue 30: a looped playback goes on past the recording's end until it
/// is stopped (then its user leaves and nothing more is sent); a key-frame
/// request from a destination makes the player send the last key frame at
/// once (the recording's next one is up to a second away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looped_playback_answers_key_frame_requests_and_stops_when_told() {
    bounded(async {
        if !ffmpeg_available() {
            return;
        }
        let (center, _dir, (msu, _stop)) = recorded_room("clip", 45_000, 2).await;
        let c = center.center().clone();
        let mut b = viewer(&center).await;
        let played = c
            .start_playback(pilot_center::proto::StartPlaybackRequest {
                recording_id: "clip".into(),
                source_user_id: "u1".into(),
                room_id: "r2".into(),
                user_id: "replay".into(),
                r#loop: true,
                ..Default::default()
            })
            .await
            .unwrap();
        let pushed = b.expect("newPusher").await;
        let video = pushed["pushers"][0].clone();
        let ssrc = video["rtpParam"]["ssrc"].as_u64().unwrap() as u32;
        // B's receive relay: a socket that keeps what arrives, in order.
        let sock = udp().await;
        let got: Arc<std::sync::Mutex<Arrivals>> = Arc::default();
        {
            let (sock, got) = (sock.clone(), got.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                while let Ok((n, _)) = sock.recv_from(&mut buf).await {
                    got.lock().unwrap().push((tokio::time::Instant::now(), buf[..n].to_vec()));
                }
            });
        }
        b.notify(
            "pullRemoteStream",
            json!({"roomId": "r2", "pusher_user_id": "replay", "udp_ip": "127.0.0.1",
                   "udp_port": port(&sock), "mediaType": "video", "pushInfo": video}),
        )
        .await;
        let rtp_of = |g: &[(tokio::time::Instant, Vec<u8>)]| {
            g.iter()
                .filter(|(_, p)| !pilot_msu::hub::is_rtcp(p))
                .cloned()
                .collect::<Vec<_>>()
        };
        until("the first key frame arrives", || {
            rtp_of(&got.lock().unwrap()).iter().any(|(_, p)| starts_key_picture(p))
        })
        .await;
        // A PLI from B: the last key frame comes again at once.
        let keys_before = rtp_of(&got.lock().unwrap())
            .iter()
            .filter(|(_, p)| starts_key_picture(p))
            .count();
        sock.send_to(&pli(ssrc), msu.media).await.unwrap();
        let asked = tokio::time::Instant::now();
        until("a key frame answers the PLI", || {
            rtp_of(&got.lock().unwrap())
                .iter()
                .filter(|(_, p)| starts_key_picture(p))
                .count()
                > keys_before
        })
        .await;
        let answered = rtp_of(&got.lock().unwrap())
            .into_iter()
            .filter(|(at, p)| *at >= asked && starts_key_picture(p))
            .map(|(at, _)| at - asked)
            .next()
            .unwrap();
        assert!(
            answered < Duration::from_millis(500),
            "the key frame came {answered:?} after the PLI (the recording's next one is up to 1 s away)"
        );

        // Looped: still playing past the recording's 2 s.
        let started = tokio::time::Instant::now();
        until("the playback goes on past its end", || {
            started.elapsed() > Duration::from_secs(3)
                && rtp_of(&got.lock().unwrap())
                    .last()
                    .is_some_and(|(at, _)| at.elapsed() < Duration::from_millis(200))
        })
        .await;
        assert_eq!(c.list_playbacks().len(), 1);
        c.stop_playback(&played.playback_id).await.unwrap();
        let left = b.expect("userLeave").await;
        assert_eq!(left["userId"], json!("replay"), "{left}");
        until("the MSU stops playing", || msu.players.running() == 0).await;
        assert!(c.list_playbacks().is_empty());
    })
    .await;
}

/// Issue 30 (nothing lost): a video packet lost between the publisher's
/// SFU and the MSU is asked for again (a NACK from the hub, the SFU answers
/// with RTX), and the recording keeps every picture that was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_packet_is_asked_again_and_the_recording_keeps_every_picture() {
    bounded(async {
        if !ffmpeg_available() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (frames, _, _, rtx) = record_ffmpeg_losing(dir.path(), 2, Some(30)).await;
        assert!(rtx >= 1, "the hub asked for the lost packet");
        let (streams, _) = ffprobe(&dir.path().join("rec-1/u1-1.mp4"));
        assert_eq!(
            streams[0],
            ("h264".to_owned(), frames),
            "every picture sent"
        );
    })
    .await;
}
