//! Giving memory back after a crowd.

use std::collections::HashMap;

/// Gives a map's memory back once it holds a small fraction of what it
/// once did (a crowd left), so the heap can be trimmed; rare enough to cost
/// nothing in steady state.
pub(crate) fn shrink_after_crowd<K: std::hash::Hash + Eq, V, S: std::hash::BuildHasher>(
    map: &mut HashMap<K, V, S>,
) {
    if map.capacity() > 1024 && map.len() < map.capacity() / 8 {
        map.shrink_to_fit();
    }
}
