//! Listings of the state, read under one lock: sessions and MSUs as the
//! API shows them, and the admin page's overview.

use super::outbound::SessionStats;
use super::state::State;
use crate::clock::timestamp;
use crate::proto;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

/// One moment of the center, for the admin page (see `Center::overview`).
#[derive(Debug, Clone, Default)]
pub struct Overview {
    /// The first rooms by id, in detail.
    pub rooms: Vec<proto::RoomDetail>,
    /// How many rooms there are in all.
    pub rooms_total: usize,
    /// Every session, sorted by id.
    pub sessions: Vec<proto::SessionInfo>,
    /// Every MSU, sorted by id.
    pub msus: Vec<proto::MsuInfo>,
    /// The feed's sequence number at that moment.
    pub cursor: u64,
}

pub(super) fn sessions_of(state: &State) -> Vec<proto::SessionInfo> {
    state
        .registry
        .sorted()
        .into_iter()
        .map(|row| {
            let (_, user_count, msu_ids) = state.rules.session_view(row.id).unwrap_or_default();
            let stat = |f: fn(&SessionStats) -> &AtomicU64| {
                row.local.map_or(0, |e| f(&e.stats).load(Ordering::Relaxed))
            };
            proto::SessionInfo {
                session_id: row.id,
                peer_addr: row.peer.addr.clone(),
                transport: row.peer.transport.into(),
                user_count,
                connected_at: Some(timestamp(row.connected_at)),
                messages_in: stat(|s| &s.messages_in),
                messages_out: stat(|s| &s.messages_out),
                msu_ids,
                peer_id: row.peer.identity.clone(),
                queue_depth: row
                    .local
                    .map_or(0, |e| u32::try_from(e.outlet.depth()).unwrap_or(u32::MAX)),
                node_id: row.node_id.to_owned(),
                incarnation: row.peer.incarnation.clone(),
            }
        })
        .collect()
}

pub(super) fn msus_of(state: &State) -> Vec<proto::MsuInfo> {
    state
        .rules
        .msus()
        .into_iter()
        .map(|(msu_id, session_id, room_ids, registered_at)| {
            let seen_ms = state
                .registry
                .get(session_id)
                .map_or(0, |s| s.stats.last_seen_ms.load(Ordering::Relaxed));
            let seen = SystemTime::UNIX_EPOCH + Duration::from_millis(seen_ms);
            proto::MsuInfo {
                msu_id,
                session_id,
                room_ids,
                last_seen: Some(timestamp(seen.max(registered_at))),
            }
        })
        .collect()
}
