//! What the MSU's benchmarks share: the process's own CPU time and memory,
//! and (with the tests) real ffmpeg as a publisher.

#[allow(dead_code)] // one benchmark publishes
#[path = "../../tests/common/publisher.rs"]
pub mod publisher;

/// CPU time (user + system) this process used so far, in seconds.
#[allow(dead_code)] // not every benchmark reads CPU
pub fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 (1-based), 12 and 13 here.
    let ticks: f64 = f
        .get(11..13)
        .map(|x| x.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    ticks / 100.0
}

/// This process's resident memory (`VmRSS`), in KiB.
#[allow(dead_code)] // one benchmark reads memory
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A hub on a free loopback port (512 packets of NACK history, key-frame
/// requests coalesced per 500 ms), recording into `store` if given.
#[allow(clippy::unwrap_used)] // a benchmark fails loudly
pub async fn loopback_hub(
    store: Option<std::sync::Arc<pilot_msu::record::Store>>,
) -> std::sync::Arc<pilot_msu::hub::Hub> {
    let hub = pilot_msu::hub::Hub::bind(
        std::net::Ipv4Addr::LOCALHOST.into(),
        0,
        0,
        512,
        std::time::Duration::from_millis(500),
        store,
    )
    .await
    .unwrap();
    std::sync::Arc::new(hub)
}

/// Stream `i` (one video track, SSRC 1000 + `i`) relayed to `to`.
#[allow(dead_code)] // the relay benchmarks use it, not record_bench
pub fn video_relay(i: u32, to: &[std::net::SocketAddr]) -> pilot_msu::hub::RelaySpec {
    use pilot_msu::hub::{Destination, RelaySpec, Track};
    RelaySpec {
        key: ("r".into(), format!("u{i}")),
        tracks: vec![Track {
            pusher_id: "v".into(),
            ssrc: 1000 + i,
            rtx_ssrc: 0,
            codec: "H264".into(),
        }],
        destinations: to
            .iter()
            .map(|addr| Destination {
                addr: *addr,
                pusher_ids: vec!["v".into()],
            })
            .collect(),
        recording_id: String::new(),
    }
}
