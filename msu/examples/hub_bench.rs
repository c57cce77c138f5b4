//! What the hub adds per hop, what it holds per stream, and how much one
//! core forwards when nothing else runs on it:
//! `cargo run --release -p pilot-msu --example hub_bench`.
//!
//! The forwarder under test (the hub with one relay per stream, or a bare
//! `recv_from`/`send_to` loop for comparison) runs alone on a thread of
//! its own; the sender and the receiving sockets run on the benchmark's
//! runtime beside it.
//! - **Latency per hop:** 20 streams at 2,000 packets/s in all, one
//!   destination; each packet carries the time it was sent, the receiver
//!   takes the difference. Medians and 99th percentiles of 3 rounds of 3 s,
//!   the hub beside the bare loop: the difference is what the hub adds.
//! - **Ceiling:** 20 streams, one destination, as fast as the sender goes:
//!   packets the forwarder sent per second (its own count), 3 rounds.
//! - **Memory per stream:** 1,000 relays, each stream's history filled
//!   (600 packets of 1,200 bytes each, all of them forwarded); resident
//!   memory before and after.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark fails loudly

mod common;

use common::rss_kib;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

const STREAMS: u32 = 20;

/// A forwarder on a thread of its own; stops when dropped.
struct Forwarder {
    addr: SocketAddr,
    /// Packets it sent on.
    out: Arc<AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the hub (or, `bare`, the bare loop) sending `streams` streams to
/// `to`, on a thread of its own.
fn forwarder(bare: bool, streams: u32, to: SocketAddr) -> Forwarder {
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let out = Arc::new(AtomicU64::new(0));
    let counted = out.clone();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            if bare {
                let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
                tx.send(s.local_addr().unwrap()).unwrap();
                let serve = async {
                    let mut buf = vec![0u8; 65_536];
                    while let Ok((n, _)) = s.recv_from(&mut buf).await {
                        if s.try_send_to(&buf[..n], to).is_ok() {
                            counted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                };
                tokio::select! { () = serve => {}, _ = stopped => {} }
            } else {
                let hub = common::loopback_hub(None).await;
                for i in 0..streams {
                    hub.apply(common::video_relay(i, &[to]));
                }
                tx.send(hub.local_addr().unwrap()).unwrap();
                let watch = async {
                    loop {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        counted.store(
                            hub.stats().rtp_out.load(Ordering::Relaxed),
                            Ordering::Relaxed,
                        );
                    }
                };
                tokio::select! { _ = hub.run() => {}, () = watch => {}, _ = stopped => {} }
                counted.store(
                    hub.stats().rtp_out.load(Ordering::Relaxed),
                    Ordering::Relaxed,
                );
            }
        });
    });
    Forwarder {
        addr: rx.recv().unwrap(),
        out,
        stop: Some(stop),
        thread: Some(thread),
    }
}

/// An RTP packet of stream `i`, number `seq`, carrying `sent_ns` (1,200 bytes).
fn packet(i: u32, seq: u16, sent_ns: u64) -> Vec<u8> {
    let mut p = vec![0u8; 1200];
    p[0] = 0x80;
    p[1] = 108;
    p[2..4].copy_from_slice(&seq.to_be_bytes());
    p[8..12].copy_from_slice(&(1000 + i).to_be_bytes());
    p[12..20].copy_from_slice(&sent_ns.to_be_bytes());
    p
}

/// A socket nobody reads: the kernel drops what does not fit (the
/// forwarder's sends still count).
fn sink() -> std::net::UdpSocket {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap()
}

/// Sends at `rate` packets/s (0: as fast as it can) for `secs` to `to`;
/// returns how many it sent.
async fn send(to: SocketAddr, base: Instant, rate: u64, secs: u64) -> u64 {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(secs) {
        if rate > 0 {
            let due = Duration::from_secs_f64(n as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        let i = (n % u64::from(STREAMS)) as u32;
        let _ = s
            .send_to(&packet(i, n as u16, base.elapsed().as_nanos() as u64), to)
            .await;
        n += 1;
        if rate == 0 && n.is_multiple_of(64) {
            tokio::task::yield_now().await;
        }
    }
    n
}

/// A receiver that records each packet's one-way latency.
async fn receiver(base: Instant) -> (SocketAddr, Arc<std::sync::Mutex<Vec<u64>>>) {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    let seen: Arc<std::sync::Mutex<Vec<u64>>> = Arc::default();
    let kept = seen.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok((n, _)) = s.recv_from(&mut buf).await {
            if n >= 20 {
                let sent = u64::from_be_bytes(buf[12..20].try_into().unwrap());
                let now = base.elapsed().as_nanos() as u64;
                kept.lock().unwrap().push(now.saturating_sub(sent));
            }
        }
    });
    (addr, seen)
}

fn percentile(v: &mut [u64], p: f64) -> f64 {
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or(0) as f64 / 1000.0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let base = Instant::now();
    println!(
        "latency per hop, {STREAMS} streams at 2,000 packets/s, 3 rounds of 3 s (medians of rounds):"
    );
    for bare in [false, true] {
        let (mut p50, mut p99) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            let (to, seen) = receiver(base).await;
            let f = forwarder(bare, STREAMS, to);
            send(f.addr, base, 2_000, 3).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut v = seen.lock().unwrap().clone();
            p50.push(percentile(&mut v, 0.5));
            p99.push(percentile(&mut v, 0.99));
        }
        println!(
            "  {}: median {:>6.1} µs, p99 {:>7.1} µs",
            if bare { "bare" } else { "hub " },
            median(p50),
            median(p99)
        );
    }

    println!(
        "ceiling: the forwarder alone on its core, the sender on the other, {STREAMS} streams, 3 rounds of 3 s:"
    );
    for bare in [false, true] {
        let (mut rates, mut offered) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            let to = sink();
            let f = forwarder(bare, STREAMS, to.local_addr().unwrap());
            let start = Instant::now();
            let sent = send(f.addr, base, 0, 3).await;
            let secs = start.elapsed().as_secs_f64();
            tokio::time::sleep(Duration::from_millis(100)).await;
            rates.push(f.out.load(Ordering::Relaxed) as f64 / secs);
            offered.push(sent as f64 / secs);
        }
        println!(
            "  {}: {:>9.0} packets out/s of {:>9.0} offered (medians)",
            if bare { "bare" } else { "hub " },
            median(rates),
            median(offered)
        );
    }

    let streams = 1_000;
    let to = sink();
    let before = rss_kib();
    let f = forwarder(false, streams, to.local_addr().unwrap());
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // About 50,000 packets/s in bursts of 50 (the hub's receive buffer
    // holds some 170 of them): every packet reaches it.
    for round in 0..600u16 {
        for i in 0..streams {
            let _ = s.send_to(&packet(i, round, 0), f.addr).await;
            if i % 50 == 49 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = rss_kib();
    let forwarded = f.out.load(Ordering::Relaxed);
    println!(
        "memory: {streams} relays, 600 packets of 1,200 bytes sent per stream ({forwarded} forwarded of {}): {} KiB more resident, {:.0} KiB per stream (the history keeps 512)",
        600 * streams,
        after.saturating_sub(before),
        after.saturating_sub(before) as f64 / f64::from(streams)
    );
    drop(f);
}
