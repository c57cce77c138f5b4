//! What recording and playback cost the MSU, in one run:
//! `cargo run --release -p pilot-msu --example record_bench -- [STREAMS...] [--secs S]`
//! (recording, then playback of what was recorded).
//!
//! Real ffmpeg encodes 4 s of 640x360 H264 at 25 fps and 48 kHz Opus as
//! RTP once; the packets are kept with their times. For each count of
//! streams, that capture is played in real time (looped, timestamps and
//! sequence numbers carried on) as that many publishers with SSRCs of their
//! own into a hub, twice: relayed only, and recorded to files. Figures:
//! the process's CPU time (`/proc/self/stat`: the player is included alike
//! in both) per stream and second, the cost recording adds per stream as a
//! share of one core, bytes written per second, and the resident memory
//! the recorders add (`VmRSS`). Then the files each recording round wrote
//! are played back at once (looped, each to a counting socket): CPU per
//! playback, packets out per second, and the share that arrived.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark fails loudly

mod common;

use common::{cpu_seconds, rss_kib};
use pilot_msu::hub::{RelaySpec, Track};
use pilot_msu::record::Store;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

const VIDEO: u32 = 0x1111_0001;
const AUDIO: u32 = 0x2222_0001;

/// The capture: (offset from the first packet, packet).
async fn capture() -> (Vec<(Duration, Vec<u8>)>, Duration) {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = s.local_addr().unwrap().port();
    let publisher = common::publisher::Publisher {
        secs: 4,
        size: "640x360",
        gop: 50,
        bitrate: Some("800k"),
        video: VIDEO,
        audio: AUDIO,
    };
    let ffmpeg = publisher
        .command(port)
        .spawn()
        .expect("ffmpeg (Debian's ffmpeg package)");
    let mut packets = Vec::new();
    let mut buf = vec![0u8; 2048];
    let mut start = None;
    let collect = async {
        while let Ok((n, _)) = s.recv_from(&mut buf).await {
            let t = *start.get_or_insert_with(Instant::now);
            packets.push((t.elapsed(), buf[..n].to_vec()));
        }
    };
    let mut ffmpeg = ffmpeg;
    tokio::select! {
        () = collect => {}
        _ = ffmpeg.wait() => {}
    }
    let span = packets.last().map(|p| p.0).unwrap_or_default() + Duration::from_millis(40);
    (packets, span)
}

/// Plays `streams` publishers of the capture to `to` for `secs` seconds.
async fn play(
    to: SocketAddr,
    capture: &[(Duration, Vec<u8>)],
    span: Duration,
    streams: u32,
    secs: u64,
) -> u64 {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let ssrc_of = |p: &[u8]| u32::from_be_bytes([p[8], p[9], p[10], p[11]]);
    // Per lap, each SSRC's sequence numbers go on by its packet count.
    let video_count = capture.iter().filter(|(_, p)| ssrc_of(p) == VIDEO).count() as u32;
    let audio_count = capture.len() as u32 - video_count;
    // Publishers are not in step: stream i starts i/streams of a frame
    // (40 ms) later, so a packet's copies do not all arrive at once.
    let mut schedule: Vec<(Duration, usize, u32)> = capture
        .iter()
        .enumerate()
        .flat_map(|(k, (at, _))| {
            (0..streams).map(move |i| (*at + Duration::from_millis(40) * i / streams, k, i))
        })
        .collect();
    schedule.sort();
    let start = Instant::now();
    let (mut lap, mut sent) = (0u32, 0u64);
    let mut packet = Vec::with_capacity(2048);
    'play: loop {
        for (at, k, i) in &schedule {
            let due = span * lap + *at;
            if due > Duration::from_secs(secs) {
                break 'play;
            }
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                tokio::time::sleep(wait).await;
            }
            let p = &capture[*k].1;
            let (clock, count, audio) = if ssrc_of(p) == VIDEO {
                (90_000.0, video_count, 0)
            } else {
                (48_000.0, audio_count, 1)
            };
            let seq = u16::from_be_bytes([p[2], p[3]]).wrapping_add((lap * count) as u16);
            let ts = u32::from_be_bytes([p[4], p[5], p[6], p[7]])
                .wrapping_add((span.as_secs_f64() * clock) as u32 * lap);
            packet.clear();
            packet.extend_from_slice(p);
            packet[2..4].copy_from_slice(&seq.to_be_bytes());
            packet[4..8].copy_from_slice(&ts.to_be_bytes());
            packet[8..12].copy_from_slice(&(10_000 + i * 2 + audio).to_be_bytes());
            if s.send_to(&packet, to).await.is_ok() {
                sent += 1;
            }
        }
        lap += 1;
    }
    sent
}

struct Round {
    /// Packets the hub took of those sent.
    taken: f64,
    cpu: f64,
    bytes: u64,
    rss_kib: u64,
}

async fn round(
    capture: &[(Duration, Vec<u8>)],
    span: Duration,
    streams: u32,
    secs: u64,
    record: bool,
    dir: &std::path::Path,
) -> Round {
    let (events, _told) = tokio::sync::mpsc::unbounded_channel();
    let store = Arc::new(Store::new(dir.to_owned(), events));
    let hub = common::loopback_hub(Some(store)).await;
    for i in 0..streams {
        hub.apply(RelaySpec {
            key: ("r".into(), format!("u{i}")),
            tracks: vec![
                Track {
                    pusher_id: "v".into(),
                    ssrc: 10_000 + i * 2,
                    rtx_ssrc: 0,
                    codec: "H264".into(),
                },
                Track {
                    pusher_id: "a".into(),
                    ssrc: 10_001 + i * 2,
                    rtx_ssrc: 0,
                    codec: "opus".into(),
                },
            ],
            destinations: Vec::new(),
            recording_id: if record {
                "bench".into()
            } else {
                String::new()
            },
        });
    }
    let to = hub.local_addr().unwrap();
    let serve = {
        let hub = hub.clone();
        tokio::spawn(async move { hub.run().await })
    };
    let rss = rss_kib();
    let cpu = cpu_seconds();
    let sent = play(to, capture, span, streams, secs).await;
    let taken = hub
        .stats()
        .rtp_in
        .load(std::sync::atomic::Ordering::Relaxed) as f64
        / sent as f64;
    let rss_kib = rss_kib().saturating_sub(rss);
    let finishing = hub.clone();
    tokio::task::spawn_blocking(move || finishing.finish_recordings())
        .await
        .unwrap();
    let cpu = cpu_seconds() - cpu;
    serve.abort();
    let bytes = std::fs::read_dir(dir.join("bench"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    Round {
        taken,
        cpu,
        bytes,
        rss_kib,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let secs = args
        .iter()
        .position(|a| a == "--secs")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(10);
    let mut counts: Vec<u32> = args
        .iter()
        .enumerate()
        .filter(|(i, a)| *a != "--secs" && (*i == 0 || args[i - 1] != "--secs"))
        .filter_map(|(_, a)| a.parse().ok())
        .collect();
    if counts.is_empty() {
        counts = vec![1, 10, 50];
    }
    let (capture, span) = capture().await;
    println!(
        "capture: {} packets over {:.1} s (640x360 H264 at 800 kbit/s, 25 fps; Opus), played {secs} s per round",
        capture.len(),
        span.as_secs_f64()
    );
    println!(
        "streams  taken  relay CPU/s  record CPU/s  recording adds per stream  written/s  RSS added"
    );
    let mut played = Vec::new();
    for n in counts {
        let relay_dir = tempfile::tempdir().unwrap();
        let relay = round(&capture, span, n, secs, false, relay_dir.path()).await;
        let rec_dir = tempfile::tempdir().unwrap();
        let rec = round(&capture, span, n, secs, true, rec_dir.path()).await;
        played.push((n, play_back(rec_dir.path(), n, secs).await));
        let per_stream = (rec.cpu - relay.cpu) / secs as f64 / f64::from(n);
        println!(
            "{n:>7}  {:>4.0} %  {:>10.3}  {:>12.3}  {:>20.2} % of a core  {:>7.0} KiB  {:>6} KiB",
            rec.taken * 100.0,
            relay.cpu / secs as f64,
            rec.cpu / secs as f64,
            per_stream * 100.0,
            rec.bytes as f64 / 1024.0 / secs as f64,
            rec.rss_kib,
        );
    }
    println!("playbacks  CPU/s  per playback  packets out/s  arrived");
    for (n, p) in played {
        println!(
            "{n:>9}  {:>5.3}  {:>6.2} % of a core  {:>13.0}  {:>6.1} %",
            p.cpu / secs as f64,
            p.cpu / secs as f64 / f64::from(n) * 100.0,
            p.sent as f64 / secs as f64,
            p.arrived as f64 * 100.0 / p.sent.max(1) as f64,
        );
    }
}

struct Played {
    cpu: f64,
    sent: u64,
    arrived: u64,
}

/// Plays the `n` users recorded in `dir` (recording `bench`) at once, each
/// to a counting socket, for `secs` seconds.
async fn play_back(dir: &std::path::Path, n: u32, secs: u64) -> Played {
    use pilot_msu::playback::{AUDIO_PUSHER, PlaybackSpec, Players, VIDEO_PUSHER};
    let (events, _told) = tokio::sync::mpsc::unbounded_channel();
    let store = Arc::new(Store::new(dir.to_owned(), events));
    let hub = common::loopback_hub(None).await;
    let (to_center, _center) = tokio::sync::mpsc::unbounded_channel();
    let players = Arc::new(Players::new(hub.clone(), store, to_center));
    let counter = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = counter.local_addr().unwrap();
    let arrived = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counting = {
        let arrived = arrived.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            while counter.recv_from(&mut buf).await.is_ok() {
                arrived.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    let cpu = cpu_seconds();
    let out = hub
        .stats()
        .rtp_out
        .load(std::sync::atomic::Ordering::Relaxed);
    for i in 0..n {
        let user = format!("p{i}");
        players.start(PlaybackSpec {
            playback_id: format!("play{i}"),
            recording_id: "bench".into(),
            source_user_id: format!("u{i}"),
            room_id: "r".into(),
            user_id: user.clone(),
            looped: true,
        });
        for pusher in [VIDEO_PUSHER, AUDIO_PUSHER] {
            players.pulled("r", &user, addr, pusher);
        }
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    for i in 0..n {
        players.stop(&format!("play{i}"));
    }
    let cpu = cpu_seconds() - cpu;
    let sent = hub
        .stats()
        .rtp_out
        .load(std::sync::atomic::Ordering::Relaxed)
        - out;
    tokio::time::sleep(Duration::from_millis(200)).await;
    counting.abort();
    Played {
        cpu,
        sent,
        arrived: arrived.load(std::sync::atomic::Ordering::Relaxed),
    }
}
