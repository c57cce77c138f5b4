//! Users whose session ended, waiting out the reconnect grace: found by
//! the identity that may take them back, and by when their grace ends.
//!
//! Invariant: a user is listed under at most one identity, and every user
//! listed has a deadline entry. A deadline entry may outlive its user's
//! listing (the user was taken back, or left, meanwhile): [`Orphans::due`]
//! hands out such entries too, and the caller skips a user that is no
//! longer an orphan with that deadline. That keeps taking a user back
//! O(1) instead of a search of the deadline lists.

use crate::center::shrink::shrink_after_crowd;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// A user: (room id, user id).
pub(crate) type UserKey = (String, String);

/// See the module docs.
#[derive(Default, Clone)]
pub(crate) struct Orphans {
    /// Identity -> its orphans.
    by_identity: HashMap<Arc<str>, HashSet<UserKey>>,
    /// Grace deadline -> users whose grace ends then.
    deadlines: BTreeMap<Duration, Vec<UserKey>>,
}

impl Orphans {
    /// `user` of `identity` waits until `deadline`.
    pub(crate) fn add(&mut self, identity: &Arc<str>, user: UserKey, deadline: Duration) {
        self.by_identity
            .entry(identity.clone())
            .or_default()
            .insert(user.clone());
        self.deadlines.entry(deadline).or_default().push(user);
    }

    /// Whether `identity` has users waiting for it.
    pub(crate) fn has(&self, identity: &str) -> bool {
        self.by_identity.contains_key(identity)
    }

    /// `user` is no longer an orphan of `identity` (taken, or gone).
    pub(crate) fn remove(&mut self, identity: &Arc<str>, room_id: &str, user_id: &str) {
        if let Some(set) = self.by_identity.get_mut(identity) {
            set.remove(&(room_id.to_owned(), user_id.to_owned()));
            if set.is_empty() {
                self.take(identity);
            }
        }
    }

    /// Every orphan of `identity`, sorted, no longer listed. The index
    /// gives its memory back once a crowd's grace is over.
    pub(crate) fn take(&mut self, identity: &Arc<str>) -> Vec<UserKey> {
        let mut users: Vec<UserKey> = self
            .by_identity
            .remove(identity)
            .map(|set| set.into_iter().collect())
            .unwrap_or_default();
        shrink_after_crowd(&mut self.by_identity);
        users.sort();
        users
    }

    /// The earliest deadline at or before `now` and its users, sorted (so
    /// every node, one that loaded a snapshot too, handles them in one
    /// order), no longer pending; `None` when no grace has ended.
    pub(crate) fn due(&mut self, now: Duration) -> Option<(Duration, Vec<UserKey>)> {
        let entry = self.deadlines.first_entry()?;
        if *entry.key() > now {
            return None;
        }
        let (deadline, mut users) = entry.remove_entry();
        users.sort();
        Some((deadline, users))
    }

    /// When the next grace ends, if any.
    pub(crate) fn next_deadline(&self) -> Option<Duration> {
        self.deadlines.keys().next().copied()
    }

    /// Identities with orphans.
    #[cfg(test)]
    pub(crate) fn identities(&self) -> usize {
        self.by_identity.len()
    }

    /// Memory the identity index keeps.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.by_identity.capacity()
    }

    /// Every listing, sorted, for comparing states in tests.
    #[cfg(test)]
    pub(crate) fn listed(&self) -> Vec<(String, UserKey)> {
        let mut all: Vec<(String, UserKey)> = self
            .by_identity
            .iter()
            .flat_map(|(id, set)| set.iter().map(move |k| (id.to_string(), k.clone())))
            .collect();
        all.sort();
        all
    }

    /// Every deadline entry, for comparing states in tests.
    #[cfg(test)]
    pub(crate) fn deadlines(&self) -> impl Iterator<Item = (Duration, &UserKey)> {
        self.deadlines
            .iter()
            .flat_map(|(d, users)| users.iter().map(move |k| (*d, k)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Add {
            identity: u8,
            user: u8,
            deadline: u8,
        },
        Remove {
            user: u8,
        },
        Take {
            identity: u8,
        },
        Expire {
            now: u8,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..4u8, 0..12u8, 0..20u8).prop_map(|(identity, user, deadline)| Op::Add {
                identity,
                user,
                deadline
            }),
            (0..12u8).prop_map(|user| Op::Remove { user }),
            (0..4u8).prop_map(|identity| Op::Take { identity }),
            (0..24u8).prop_map(|now| Op::Expire { now }),
        ]
    }

    fn key(user: u8) -> UserKey {
        (format!("room{}", user % 3), format!("user{user}"))
    }

    proptest! {
        /// Against a plain map of user -> (identity, deadline): `take`
        /// returns exactly an identity's users, and `due` hands out every
        /// user still waiting once its deadline has passed, at that
        /// deadline (stale entries besides, which the model ignores).
        #[test]
        fn orphans_behave_like_a_map_of_user_to_identity_and_deadline(ops in proptest::collection::vec(op(), 1..80)) {
            let mut orphans = Orphans::default();
            let mut model: HashMap<UserKey, (Arc<str>, Duration)> = HashMap::new();
            let identity = |i: u8| -> Arc<str> { Arc::from(format!("sfu{i}").as_str()) };
            for op in ops {
                match op {
                    Op::Add { identity: i, user, deadline } => {
                        // A user is an orphan of one identity at a time, as
                        // the rules keep it.
                        let k = key(user);
                        if let Some((old, _)) = model.remove(&k) {
                            orphans.remove(&old, &k.0, &k.1);
                        }
                        let d = Duration::from_secs(deadline.into());
                        orphans.add(&identity(i), k.clone(), d);
                        model.insert(k, (identity(i), d));
                    }
                    Op::Remove { user } => {
                        let k = key(user);
                        if let Some((id, _)) = model.remove(&k) {
                            orphans.remove(&id, &k.0, &k.1);
                        }
                    }
                    Op::Take { identity: i } => {
                        let id = identity(i);
                        let mut expected: Vec<UserKey> = model
                            .iter()
                            .filter(|(_, (m, _))| *m == id)
                            .map(|(k, _)| k.clone())
                            .collect();
                        expected.sort();
                        model.retain(|_, (m, _)| *m != id);
                        prop_assert_eq!(orphans.take(&id), expected);
                    }
                    Op::Expire { now } => {
                        let now = Duration::from_secs(now.into());
                        let mut ended = Vec::new();
                        let mut last = None;
                        while let Some((d, users)) = orphans.due(now) {
                            prop_assert!(d <= now);
                            prop_assert!(last.is_none_or(|l| l < d), "deadlines in order");
                            last = Some(d);
                            prop_assert!(users.is_sorted());
                            for k in users {
                                if model.get(&k).is_some_and(|(_, md)| *md == d) {
                                    let (id, _) = model.remove(&k).unwrap_or_else(|| unreachable!());
                                    orphans.remove(&id, &k.0, &k.1);
                                    ended.push(k);
                                }
                            }
                        }
                        prop_assert!(
                            model.values().all(|(_, d)| *d > now),
                            "a user whose grace ended is still waiting"
                        );
                        prop_assert!(orphans.next_deadline().is_none_or(|d| d > now));
                    }
                }
                // Everyone the model holds is listed, under its identity,
                // with a deadline entry.
                let mut expected: Vec<(String, UserKey)> =
                    model.iter().map(|(k, (id, _))| (id.to_string(), k.clone())).collect();
                expected.sort();
                prop_assert_eq!(orphans.listed(), expected);
                for (k, (_, d)) in &model {
                    prop_assert!(orphans.deadlines().any(|(dd, kk)| dd == *d && kk == k));
                }
            }
        }
    }
}
