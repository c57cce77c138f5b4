//! A peer session's outbound queue (WebSocket and gRPC `PeerSession`
//! alike), bounded in bytes rather than in items (PROTOCOL.md §6): one mass
//! event (an SFU carrying 20,000 users dropping) queues 20,000 small
//! notifications to each other SFU in one step, which healthy peers absorb;
//! a peer that does not read is found by what it leaves unsent. (The age
//! bound is the writer's: a write that cannot finish within
//! `outbound_max_delay_secs` ends the session.)
//!
//! One lock around a `VecDeque`, not a channel: a room broadcast pushes one
//! item to each member's outbox (one short lock, no atomics per item beyond
//! it), and the writer takes everything queued in one step, then works
//! through it without touching shared memory. A per-item channel cost more
//! in its atomics than the rest of a delivery.

use crate::center::{Outbound, Outlet, OutletError};
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;

/// What an item costs on the wire, roughly: what the byte bound counts.
pub trait WireSize {
    /// Bytes this item takes when written.
    fn wire_size(&self) -> usize;
}

/// What the sending and receiving halves share.
#[derive(Debug)]
struct Shared<T> {
    queue: Mutex<Queue<T>>,
    /// The receiver, when it waits for an item.
    waker: AtomicWaker,
    /// Bytes queued and unsent before the session is a slow consumer.
    max_bytes: usize,
    /// Live senders; none left ends the receiver. Outside the lock: a
    /// reply takes a sender, and the lock is the center's to take.
    senders: AtomicUsize,
}

#[derive(Debug)]
struct Queue<T> {
    /// Queued and not yet taken, with their sizes.
    items: VecDeque<(T, usize)>,
    /// Bytes of `items` and of what the receiver took and has not yet
    /// handed on (it reports that when it next takes from the queue; see
    /// [`OutboxReceiver::recv`]).
    bytes: usize,
    /// Items the receiver holds, as of its last take (for the gauge).
    held: usize,
    /// The receiver is gone.
    closed: bool,
}

/// The sending half: the center and the session's reader queue into it.
#[derive(Debug)]
pub struct Outbox<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Outbox<T> {
    // Not derived: a derive would ask `T: Clone`, which items need not be.
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Outbox<T> {
    fn drop(&mut self) {
        // AcqRel: the receiver that sees no sender left sees all they queued.
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.waker.wake();
        }
    }
}

/// The receiving half: the session's writer takes from it.
#[derive(Debug)]
pub struct OutboxReceiver<T> {
    shared: Arc<Shared<T>>,
    /// Taken from the queue in one step, handed out one by one.
    local: VecDeque<(T, usize)>,
    /// Bytes handed out since the last take, not yet subtracted.
    handed: usize,
}

impl<T> Drop for OutboxReceiver<T> {
    fn drop(&mut self) {
        let mut q = self.shared.queue.lock();
        q.closed = true;
        q.items.clear();
    }
}

/// A new, empty outbox holding at most `max_bytes` (but always one item).
pub fn outbox<T>(max_bytes: usize) -> (Outbox<T>, OutboxReceiver<T>) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue {
            items: VecDeque::new(),
            bytes: 0,
            held: 0,
            closed: false,
        }),
        waker: AtomicWaker::new(),
        max_bytes,
        senders: AtomicUsize::new(1),
    });
    (
        Outbox {
            shared: shared.clone(),
        },
        OutboxReceiver {
            shared,
            local: VecDeque::new(),
            handed: 0,
        },
    )
}

impl<T: WireSize> Outbox<T> {
    /// Queues `item` unless the session is over its byte bound (an empty
    /// outbox always takes it, however large).
    pub fn push(&self, item: T) -> Result<(), OutletError> {
        let size = item.wire_size();
        let was_empty = {
            let mut q = self.shared.queue.lock();
            if q.closed {
                return Err(OutletError::Closed);
            }
            if q.bytes > 0 && q.bytes.saturating_add(size) > self.shared.max_bytes {
                return Err(OutletError::Full);
            }
            q.bytes = q.bytes.saturating_add(size);
            q.items.push_back((item, size));
            q.items.len() == 1
        };
        // Only the first item can find the receiver waiting: it waits only
        // after it found the queue empty.
        if was_empty {
            self.shared.waker.wake();
        }
        Ok(())
    }
}

impl<T: From<Outbound> + WireSize + Send + 'static> Outlet for Outbox<T> {
    fn try_deliver(&self, item: Outbound) -> Result<(), OutletError> {
        self.push(T::from(item))
    }

    fn depth(&self) -> usize {
        let q = self.shared.queue.lock();
        q.items.len() + q.held
    }
}

/// The receiver reports what it handed on since it last did (written by
/// now) and how many items it still holds.
fn settle<T>(q: &mut Queue<T>, local: &VecDeque<(T, usize)>, handed: &mut usize) {
    q.bytes = q.bytes.saturating_sub(std::mem::take(handed));
    q.held = local.len();
}

impl<T> OutboxReceiver<T> {
    fn next_local(&mut self) -> Option<T> {
        let (item, size) = self.local.pop_front()?;
        self.handed += size;
        Some(item)
    }

    /// Takes everything queued (and settles); false when nothing was.
    fn take_queued(&mut self) -> bool {
        let mut q = self.shared.queue.lock();
        std::mem::swap(&mut q.items, &mut self.local);
        settle(&mut q, &self.local, &mut self.handed);
        !self.local.is_empty()
    }

    /// The next item; `None` when every sender is gone.
    ///
    /// What `recv` and `try_recv` hand out counts against the byte bound
    /// until the receiver next goes back to the shared queue: at the next
    /// `recv`, or at a `try_recv` that has used up what it took. (A write
    /// batch ends with a `try_recv` that finds nothing, so a batch counts
    /// until it is gathered, not until it is written; only one cut at the
    /// batch's item limit counts until the next `recv`.)
    pub async fn recv(&mut self) -> Option<T> {
        std::future::poll_fn(|cx| {
            if !self.local.is_empty() {
                if self.handed > 0 {
                    settle(&mut self.shared.queue.lock(), &self.local, &mut self.handed);
                }
            } else if !self.take_queued() {
                self.shared.waker.register(cx.waker());
                // Read before taking again: whatever the last sender queued
                // before it left is then in the queue taken.
                let none_left = self.shared.senders.load(Ordering::Acquire) == 0;
                // Taken again after registering: a push in between found no
                // waker to wake.
                if !self.take_queued() {
                    return if none_left {
                        Poll::Ready(None)
                    } else {
                        Poll::Pending
                    };
                }
            }
            Poll::Ready(self.next_local())
        })
        .await
    }

    /// The next item if one is queued (within a write batch).
    pub fn try_recv(&mut self) -> Option<T> {
        if self.local.is_empty() {
            self.take_queued();
        }
        self.next_local()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Text(usize);

    impl WireSize for Text {
        fn wire_size(&self) -> usize {
            self.0
        }
    }

    impl From<Outbound> for Text {
        fn from(o: Outbound) -> Self {
            Text(o.wire_size())
        }
    }

    fn text(n: usize) -> Text {
        Text(n)
    }

    #[test]
    fn bounded_by_bytes_not_items_and_an_empty_outbox_takes_anything() {
        let (tx, mut rx) = outbox(1000);
        assert!(tx.push(text(5000)).is_ok(), "one large item always goes");
        assert_eq!(tx.push(text(1)).err(), Some(OutletError::Full));
        assert!(rx.try_recv().is_some());
        assert_eq!(
            tx.push(text(1)).err(),
            Some(OutletError::Full),
            "counted while being written"
        );
        assert!(
            rx.try_recv().is_none(),
            "the writer comes back: it was written"
        );
        for _ in 0..100 {
            tx.push(text(10)).unwrap();
        }
        assert_eq!(tx.depth(), 100);
        assert_eq!(tx.push(text(1)).err(), Some(OutletError::Full));
    }

    /// A waker that records that it was woken.
    struct Flag(std::sync::atomic::AtomicBool);

    impl futures_util::task::ArcWake for Flag {
        fn wake_by_ref(flag: &Arc<Self>) {
            flag.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn a_waiting_writer_is_woken_by_a_push_and_by_its_last_sender_leaving() {
        use std::future::Future;
        use std::sync::atomic::Ordering::SeqCst;
        let (tx, mut rx) = outbox(1000);
        let flag = Arc::new(Flag(false.into()));
        let waker = futures_util::task::waker(flag.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        {
            let mut recv = Box::pin(rx.recv());
            assert!(recv.as_mut().poll(&mut cx).is_pending());
            tx.push(text(7)).unwrap();
            assert!(flag.0.load(SeqCst), "the push woke the writer");
            assert!(matches!(
                recv.as_mut().poll(&mut cx),
                Poll::Ready(Some(Text(7)))
            ));
        }
        flag.0.store(false, SeqCst);
        let mut recv = Box::pin(rx.recv());
        assert!(recv.as_mut().poll(&mut cx).is_pending());
        let other = tx.clone();
        drop(tx);
        assert!(!flag.0.load(SeqCst), "a sender is left");
        drop(other);
        assert!(flag.0.load(SeqCst), "the last sender woke the writer");
        assert!(matches!(recv.as_mut().poll(&mut cx), Poll::Ready(None)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bursts_from_another_thread_arrive_in_order_and_none_is_lost() {
        let (tx, mut rx) = outbox(1 << 20);
        // One deadline for the whole run: a lost wake-up leaves `recv`
        // waiting until the timer wakes the task, and after the deadline
        // that is a failure, not a slow pass.
        let run = async {
            for burst in 0..500usize {
                let sender = tx.clone();
                let pushing = std::thread::spawn(move || {
                    for _ in 0..=burst % 7 {
                        sender.push(text(burst)).unwrap();
                    }
                });
                for _ in 0..=burst % 7 {
                    assert_eq!(rx.recv().await.map(|t| t.0), Some(burst), "in order");
                }
                pushing.join().unwrap();
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(20), run)
            .await
            .unwrap();
        assert!(rx.try_recv().is_none(), "nothing more than was sent");
    }

    #[tokio::test]
    async fn what_was_written_frees_room_while_the_rest_of_a_burst_waits() {
        let (tx, mut rx) = outbox(1000);
        for _ in 0..10 {
            tx.push(text(100)).unwrap();
        }
        // A write batch of five, taken from the burst of ten.
        assert!(rx.recv().await.is_some());
        for _ in 0..4 {
            assert!(rx.try_recv().is_some());
        }
        assert_eq!(
            tx.push(text(100)).err(),
            Some(OutletError::Full),
            "none written yet"
        );
        // The writer comes back for the next batch: the first five are out.
        assert!(rx.recv().await.is_some());
        for _ in 0..5 {
            tx.push(text(100)).unwrap();
        }
        assert_eq!(tx.push(text(100)).err(), Some(OutletError::Full));
    }

    #[test]
    fn nothing_is_queued_for_a_writer_that_is_gone() {
        let (tx, rx) = outbox::<Text>(1000);
        drop(rx);
        assert_eq!(tx.push(text(1)).err(), Some(OutletError::Closed));
    }
}
