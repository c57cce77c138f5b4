//! The Redis keys of one cluster.

/// The Redis keys of one cluster. Every key carries the prefix as a hash
/// tag, so all of them live in one Redis Cluster slot.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    pub(super) log: String,
    pub(super) node_numbers: String,
    /// Hash: `after` (the last entry it includes), `key` (where its bytes,
    /// a `Snapshot`, are).
    pub(super) snapshot: String,
    /// Taken by the node writing a snapshot.
    pub(super) snapshot_lock: String,
    /// The id below which the log was last trimmed.
    pub(super) trimmed: String,
    /// Hash: node number -> the last entry it applied.
    pub(super) positions: String,
    /// Sorted set: node number -> when its lease ends (Redis time, ms).
    pub(super) leases: String,
    /// Hash: node number -> node id, for logs.
    pub(super) node_ids: String,
    /// When any node last renewed its lease (Redis time, ms).
    pub(super) renewed: String,
    /// Since when leases have been renewed without a gap longer than a
    /// lease (Redis time, ms): a lease that lapsed before then lapsed in an
    /// outage for everyone, and does not make its node lost.
    pub(super) live_since: String,
    pub(super) prefix: String,
}

impl Keys {
    pub(super) fn new(prefix: &str) -> Self {
        Self {
            log: format!("{{{prefix}}}:log"),
            node_numbers: format!("{{{prefix}}}:node-numbers"),
            snapshot: format!("{{{prefix}}}:snapshot"),
            snapshot_lock: format!("{{{prefix}}}:snapshot-lock"),
            trimmed: format!("{{{prefix}}}:trimmed"),
            positions: format!("{{{prefix}}}:positions"),
            leases: format!("{{{prefix}}}:leases"),
            node_ids: format!("{{{prefix}}}:node-ids"),
            renewed: format!("{{{prefix}}}:renewed"),
            live_since: format!("{{{prefix}}}:live-since"),
            prefix: prefix.to_owned(),
        }
    }

    /// Where the bytes of the snapshot after entry `after` are stored.
    pub(super) fn snapshot_data(&self, after: &str) -> String {
        format!("{{{}}}:snapshot:{after}", self.prefix)
    }
}
