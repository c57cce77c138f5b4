//! `pilot-msu`: a media server unit for Pilot Center.
//!
//! The real SFU sends each publisher to one destination only, the first
//! puller (PROTOCOL.md §8). An MSU registered with a media address becomes
//! that destination for every publisher of its rooms, and fans the media
//! out to every SFU that pulls it ([`hub`]); the center tells it where
//! ([`link`]). Every subscriber on every SFU sees every publisher.

pub mod config;
pub mod hub;
pub mod link;
pub mod playback;
pub mod record;

use config::Config;
use hub::Hub;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// A running MSU: its hub, bound, and its link's state.
pub struct Msu {
    /// The hub.
    pub hub: Arc<Hub>,
    /// The address SFUs send to (the advertised IP, the bound port).
    pub media: SocketAddr,
    /// The link's state.
    pub link: Arc<link::LinkState>,
    /// The playbacks it runs.
    pub players: Arc<playback::Players>,
}

/// A fresh incarnation for this process: another one under the same id
/// tells the center the old process is gone.
pub fn new_incarnation() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            format!("{}-{}", std::process::id(), t.as_nanos())
        })
}

/// Binds the hub and starts serving the center until `stop` resolves.
/// Returns once the socket is bound, with the MSU and the task serving it.
pub async fn start(
    config: Config,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(Msu, tokio::task::JoinHandle<()>)> {
    let m = &config.media;
    let (events_tx, events) = tokio::sync::mpsc::unbounded_channel();
    let store = Arc::new(
        record::Store::new(config.recording.dir.clone(), events_tx)
            .with_keyframe_every(Duration::from_secs(config.recording.keyframe_secs)),
    );
    let hub = Arc::new(
        Hub::bind(
            m.listen_ip,
            m.port_min,
            m.port_max,
            m.history_packets,
            Duration::from_millis(m.keyframe_interval_ms),
            Some(store.clone()),
        )
        .await?,
    );
    let bound = hub.local_addr()?;
    let media = SocketAddr::new(m.advertised_ip.unwrap_or(m.listen_ip), bound.port());
    tracing::info!(media = %media, bound = %bound, msu.id = %config.msu.id, "media hub listening");
    let state = Arc::new(link::LinkState::default());
    let (to_center_tx, to_center) = tokio::sync::mpsc::unbounded_channel();
    let players = Arc::new(playback::Players::new(
        hub.clone(),
        store.clone(),
        to_center_tx,
    ));
    let task = {
        let (hub, state, players) = (hub.clone(), state.clone(), players.clone());
        tokio::spawn(async move {
            let incarnation = new_incarnation();
            let serve = async {
                if let Err(e) = hub.run().await {
                    tracing::error!(error = %e, "media socket failed");
                }
            };
            let summary = async {
                let mut tick = tokio::time::interval(Duration::from_secs(10));
                let mut last = String::new();
                loop {
                    tick.tick().await;
                    let line = hub.stats().line();
                    if line != last {
                        for c in hub.counters() {
                            tracing::info!(room.id = %c.key.0, pusher.user = %c.key.1, packets_in = c.packets_in, packets_out = c.packets_out, worst_fraction_lost = c.worst_fraction_lost, worst_jitter = c.worst_jitter, "relay");
                        }
                        tracing::info!(relays = hub.relays(), "{line}");
                        last = line;
                    }
                }
            };
            tokio::select! {
                () = link::run(link::Parts { config, hub: hub.clone(), store: store.clone(), players, media, incarnation, state }, events, to_center, stop) => {}
                () = serve => {}
                () = summary => {}
            }
            // Every file written up to its last sample and closed.
            let _ = tokio::task::spawn_blocking(move || hub.finish_recordings()).await;
        })
    };
    Ok((
        Msu {
            hub,
            media,
            link: state,
            players,
        },
        task,
    ))
}
