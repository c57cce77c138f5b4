//! How long a center holding 100,000 users takes to come back on its state
//! directory (issue 20: target ≤ 2 s), from the snapshot a clean stop writes
//! and from the log alone (as after `kill -9`). `cargo bench --bench restart`;
//! medians of 5 runs each. `open` is all a restart does before it serves.

#![allow(clippy::expect_used)] // a benchmark fails loudly

use futures_util::FutureExt as _;
use pilot_center::auth::Grant;
use pilot_center::center::{Center, CenterConfig, Outbound, PeerInfo};
use pilot_center::proto::{self, Command, command};
use pilot_center::store::file::{self as file_store, FileStoreConfig, Fsync};
use std::time::{Duration, Instant};

const USERS: u32 = 100_000;

/// Fills a state directory with `USERS` users of one SFU (4 a room), then
/// stops: cleanly (a snapshot) or not (the log only).
fn fill(dir: &std::path::Path, clean: bool) {
    let config = FileStoreConfig {
        dir: dir.to_owned(),
        fsync: Fsync::Batch,
        snapshot_every: u64::MAX,
    };
    let (center, _) = file_store::open(&config, |s| Center::with_store(CenterConfig::default(), s))
        .expect("open");
    let (tx, _rx) = tokio::sync::mpsc::channel::<Outbound>(1 << 20);
    let peer = PeerInfo {
        addr: "bench".into(),
        transport: proto::Transport::Wss,
        identity: "sfu-1".into(),
        incarnation: String::new(),
    };
    let sfu = center.open_session(peer, Grant::unrestricted(), tx);
    for u in 0..USERS {
        let join = proto::JoinRequest {
            room_id: format!("room-{}", u / 4),
            user_id: format!("user-{u}"),
            user_name: format!("User {u}"),
            ..Default::default()
        };
        sfu.execute(Command {
            kind: Some(command::Kind::Join(join)),
        })
        .now_or_never()
        .expect("a local store answers at once")
        .expect("join");
    }
    drop(sfu);
    if clean {
        center.close_store().expect("snapshot");
    }
}

fn main() {
    let base = std::env::temp_dir().join(format!("pilot-restart-bench-{}", std::process::id()));
    for (what, clean) in [
        ("from the snapshot (SIGTERM)", true),
        ("from the log (kill -9)", false),
    ] {
        let mut took = Vec::new();
        let mut users = 0;
        for run in 0..5 {
            let dir = base.join(format!("{clean}-{run}"));
            std::fs::remove_dir_all(&dir).ok();
            fill(&dir, clean);
            let config = FileStoreConfig {
                dir: dir.clone(),
                fsync: Fsync::Batch,
                snapshot_every: u64::MAX,
            };
            let started = Instant::now();
            let (center, recovered) =
                file_store::open(&config, |s| Center::with_store(CenterConfig::default(), s))
                    .expect("reopen");
            took.push(started.elapsed());
            users = recovered.users;
            drop(center);
            std::fs::remove_dir_all(&dir).ok();
        }
        took.sort();
        let median: Duration = took[took.len() / 2];
        println!(
            "restart {what}: {users} users back in {median:?} (median of 5; min {:?}, max {:?})",
            took[0],
            took[took.len() - 1]
        );
    }
    std::fs::remove_dir_all(&base).ok();
}
