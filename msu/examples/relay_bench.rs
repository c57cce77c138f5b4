//! How fast the hub forwards, beside a bare UDP forwarder, in one run:
//! `cargo run --release -p pilot-msu --example relay_bench -- [STREAMS] [DESTINATIONS] [SECONDS] [RATE]`.
//!
//! A sender paces RTP packets of `STREAMS` SSRCs (1,200 bytes, as video)
//! at a fixed rate to the forwarder, which sends each to `DESTINATIONS`
//! sockets that count what arrives. Both forwarders (the hub with one
//! relay per stream, and a loop that only does `recv_from` and `send_to`)
//! get the same load; the figures are packets out per second, the
//! process's CPU time per million packets out (from `/proc/self/stat`, so
//! the sender and counters are included alike), and the hub's cost as a
//! ratio of the bare loop's. Three rounds each, medians.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark fails loudly

mod common;

use common::cpu_seconds;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

/// Packets per second the sender offers, unless given.
const RATE: u64 = 20_000;

async fn counters(n: usize) -> (Vec<SocketAddr>, Arc<AtomicU64>) {
    let got = Arc::new(AtomicU64::new(0));
    let mut addrs = Vec::new();
    for _ in 0..n {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        addrs.push(s.local_addr().unwrap());
        let got = got.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            while s.recv_from(&mut buf).await.is_ok() {
                got.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    (addrs, got)
}

async fn send(to: SocketAddr, streams: u32, secs: u64, rate: u64) -> u64 {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut packet = vec![0u8; 1200];
    packet[0] = 0x80;
    packet[1] = 108;
    let start = Instant::now();
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    while start.elapsed() < Duration::from_secs(secs) {
        tick.tick().await;
        for _ in 0..rate / 1000 {
            let ssrc = 1000 + (sent % u64::from(streams)) as u32;
            packet[2..4].copy_from_slice(&((sent & 0xffff) as u16).to_be_bytes());
            packet[8..12].copy_from_slice(&ssrc.to_be_bytes());
            let _ = s.send_to(&packet, to).await;
            sent += 1;
        }
    }
    sent
}

struct Round {
    out_per_sec: f64,
    cpu_per_million: f64,
}

/// What the sender offers.
#[derive(Clone, Copy)]
struct Load {
    streams: u32,
    secs: u64,
    rate: u64,
}

async fn round_hub(load: Load, dests: usize) -> Round {
    let streams = load.streams;
    let hub = common::loopback_hub(None).await;
    let (addrs, got) = counters(dests).await;
    for i in 0..streams {
        hub.apply(common::video_relay(i, &addrs));
    }
    let to = hub.local_addr().unwrap();
    let serve = {
        let hub = hub.clone();
        tokio::spawn(async move { hub.run().await })
    };
    let round = measure(to, load, &hub.stats().rtp_out).await;
    serve.abort();
    let _ = got.load(Ordering::Relaxed);
    round
}

/// Offers the load to `to` and reads `out` (packets sent on).
async fn measure(to: SocketAddr, load: Load, out: &AtomicU64) -> Round {
    let cpu = cpu_seconds();
    let start = Instant::now();
    send(to, load.streams, load.secs, load.rate).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (elapsed, cpu) = (start.elapsed().as_secs_f64(), cpu_seconds() - cpu);
    let out = out.load(Ordering::Relaxed) as f64;
    Round {
        out_per_sec: out / elapsed,
        cpu_per_million: cpu / out * 1e6,
    }
}

async fn round_bare(load: Load, dests: usize) -> Round {
    let s = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let to = s.local_addr().unwrap();
    let (addrs, _got) = counters(dests).await;
    let out = Arc::new(AtomicU64::new(0));
    let serve = {
        let (s, out) = (s.clone(), out.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, _)) = s.recv_from(&mut buf).await {
                for a in &addrs {
                    if s.try_send_to(&buf[..n], *a).is_ok() {
                        out.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    let round = measure(to, load, &out).await;
    serve.abort();
    round
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let streams = args.first().copied().unwrap_or(20) as u32;
    let dests = args.get(1).copied().unwrap_or(3) as usize;
    let secs = args.get(2).copied().unwrap_or(3);
    let rate = args.get(3).copied().unwrap_or(RATE);
    let load = Load {
        streams,
        secs,
        rate,
    };
    let (mut hub_out, mut hub_cpu, mut bare_out, mut bare_cpu) = (vec![], vec![], vec![], vec![]);
    for _ in 0..3 {
        let h = round_hub(load, dests).await;
        let b = round_bare(load, dests).await;
        hub_out.push(h.out_per_sec);
        hub_cpu.push(h.cpu_per_million);
        bare_out.push(b.out_per_sec);
        bare_cpu.push(b.cpu_per_million);
    }
    let (ho, hc, bo, bc) = (
        median(hub_out),
        median(hub_cpu),
        median(bare_out),
        median(bare_cpu),
    );
    println!(
        "{streams} streams x {dests} destinations, {rate} packets/s offered, {secs} s x 3 rounds (medians):"
    );
    println!("  hub : {ho:>9.0} packets out/s, {hc:>6.2} CPU s per million out");
    println!("  bare: {bo:>9.0} packets out/s, {bc:>6.2} CPU s per million out");
    println!("  hub CPU per packet = {:.2} x bare", hc / bc);
}
