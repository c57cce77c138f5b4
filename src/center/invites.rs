//! The `invite` requests a session sent to its MSU and has not had answered:
//! the same bookkeeping for the WebSocket and the gRPC front end.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::time::Instant;

/// Pending `invite`s of one session: id -> (room, deadline). Shared by the
/// session's reader (answers) and writer (sends, expiry), hence the lock,
/// held only for one map operation.
#[derive(Default)]
pub struct PendingInvites {
    next_id: AtomicU64,
    pending: Mutex<HashMap<u64, (String, Instant)>>,
}

impl PendingInvites {
    /// Records an invite for `room_id` answerable until `deadline`; returns its id.
    pub fn start(&self, room_id: String, deadline: Instant) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        self.pending.lock().insert(id, (room_id, deadline));
        id
    }

    /// The room of invite `id`, if it was pending (it no longer is).
    pub fn answer(&self, id: u64) -> Option<String> {
        self.pending.lock().remove(&id).map(|(room, _)| room)
    }

    /// Removes the invites past their deadline and returns their rooms.
    pub fn expire(&self, now: Instant) -> Vec<String> {
        let mut pending = self.pending.lock();
        let mut expired = Vec::new();
        pending.retain(|_, (room, deadline)| {
            let keep = *deadline > now;
            if !keep {
                expired.push(std::mem::take(room));
            }
            keep
        });
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn start_answer_expire() {
        let invites = PendingInvites::default();
        let now = Instant::now();
        let a = invites.start("a".into(), now + Duration::from_secs(1));
        let b = invites.start("b".into(), now + Duration::from_secs(10));
        assert_ne!(a, b);
        assert_eq!(invites.answer(a).as_deref(), Some("a"));
        assert_eq!(invites.answer(a), None, "answered once");
        assert_eq!(
            invites.expire(now + Duration::from_secs(5)),
            Vec::<String>::new()
        );
        assert_eq!(
            invites.expire(now + Duration::from_secs(10)),
            vec!["b".to_owned()]
        );
        assert_eq!(invites.answer(b), None);
    }
}
