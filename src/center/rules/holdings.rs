//! What each live session holds: its users by room, its MSUs, and which
//! process of its peer it is.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// What the rules know of a live session.
pub(crate) struct Holdings {
    pub(crate) identity: Arc<str>,
    /// Which process of the peer it is ("" when the peer gives none).
    pub(crate) incarnation: Arc<str>,
    /// Its place in the order sessions opened (the log's order in a cluster).
    pub(crate) opened: u64,
    /// Room id -> users it holds there.
    pub(crate) rooms: HashMap<String, HashSet<String>>,
    /// MSUs registered through it.
    pub(crate) msus: HashSet<String>,
}
