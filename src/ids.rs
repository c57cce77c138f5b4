//! Session ids, and the epochs that keep them from ever repeating.
//!
//! A session id is `epoch << 32 | n`: `n` counts the sessions one process
//! opened under its epoch, and the epoch names that process's stay:
//! - a cluster node's epoch is its lease (docs/CLUSTER.md, "Leases are
//!   epochs"), taken from Redis when it joins or comes back from being
//!   fenced;
//! - a center on a state directory takes a new epoch at every start and
//!   keeps the last one in the directory (`epoch`, docs/STATE.md);
//! - a center in memory only keeps nothing, and its epoch is 0.
//!
//! An epoch never goes back: each new one is above the last one kept
//! (Redis's counter, the directory's file) and above [`epoch_floor`], which
//! grows with the wall clock, so a Redis that lost everything or a state
//! directory moved aside cannot hand out an old epoch again (see
//! [`epoch_floor`] for the one case where time alone is the guard).

/// Identifies a peer session for the life of a deployment (never reused).
pub type SessionId = u64;

/// A map keyed by session id. The center makes these ids (a peer never
/// chooses one), so a fast hasher is safe where a peer's strings keep
/// std's: a delivery looks its session up once per recipient.
pub type SessionMap<V> = std::collections::HashMap<SessionId, V, foldhash::fast::RandomState>;

/// 2026-01-01T00:00:00Z in Unix milliseconds: epochs count from here.
pub const EPOCH_BASE_UNIX_MS: u64 = 1_767_225_600_000;
/// The wall clock raises the floor of epochs by one every 10 minutes.
pub const EPOCH_UNIT_MS: u64 = 600_000;
/// The largest epoch: session ids stay below 2^53, so the admin page's
/// JavaScript (and any JSON reader that uses doubles) reads them exactly.
/// The floor reaches it in 2065.
pub const MAX_EPOCH: u32 = (1 << 21) - 1;

/// The lowest epoch a process starting at `unix_ms` may take: one more than
/// the 10-minute periods since [`EPOCH_BASE_UNIX_MS`].
///
/// Epochs taken from a counter (Redis's, the directory's) run ahead of this
/// floor only while more processes start than one every 10 minutes; so
/// when the counter itself is lost (Redis emptied while every node was
/// down, a state directory moved aside), an old epoch can come back only if
/// the last ones were taken faster than that and the loss came before the
/// clock caught up. A cluster node that lives through the loss goes on
/// from the highest epoch it saw, so the counter never goes back then.
pub fn epoch_floor(unix_ms: u64) -> u32 {
    let periods = unix_ms.saturating_sub(EPOCH_BASE_UNIX_MS) / EPOCH_UNIT_MS + 1;
    u32::try_from(periods).unwrap_or(MAX_EPOCH).min(MAX_EPOCH)
}

/// The epoch in a session id (its high 32 bits).
pub fn node_of(sid: SessionId) -> u32 {
    u32::try_from(sid >> 32).unwrap_or(u32::MAX)
}

/// The `n`th session id of `epoch`.
pub fn session_id(epoch: u32, n: u64) -> SessionId {
    (u64::from(epoch) << 32) | (n & 0xffff_ffff)
}

/// Whether `id` can name a recording or a playback: 1 to 128 letters,
/// digits, `-` and `_`. A recording's id is the name of its directory on
/// its MSU, so the MSU holds what the center sends it to this rule too.
pub fn valid_recording_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floor_grows_with_the_clock_and_stays_json_safe() {
        assert_eq!(epoch_floor(0), 1);
        assert_eq!(epoch_floor(EPOCH_BASE_UNIX_MS), 1);
        assert_eq!(epoch_floor(EPOCH_BASE_UNIX_MS + EPOCH_UNIT_MS), 2);
        // 2026-12-07: about 49,000.
        let dec_2026 = 1_796_601_600_000;
        assert!((48_000..50_000).contains(&epoch_floor(dec_2026)));
        assert_eq!(epoch_floor(u64::MAX), MAX_EPOCH);
        let largest = session_id(MAX_EPOCH, u64::from(u32::MAX));
        assert!(largest < 1 << 53);
        assert_eq!(node_of(largest), MAX_EPOCH);
    }
}
