//! A peer session's outbound queue (WebSocket and gRPC `PeerSession`
//! alike), bounded in bytes rather than in items (PROTOCOL.md §6): one mass
//! event (an SFU carrying 20,000 users dropping) queues 20,000 small
//! notifications to each other SFU in one step, which healthy peers absorb;
//! a peer that does not read is found by what it leaves unsent. (The age
//! bound is the writer's: a write that cannot finish within
//! `outbound_max_delay_secs` ends the session.)

use crate::center::{Outbound, Outlet, OutletError};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::mpsc;

/// What the sending and receiving halves share.
#[derive(Debug)]
struct Meter {
    /// Bytes queued and unsent before the session is a slow consumer.
    max_bytes: usize,
    /// Bytes queued and not yet taken by the writer.
    bytes: AtomicUsize,
    /// Items queued and not yet taken.
    len: AtomicUsize,
}

/// What an item costs on the wire, roughly: what the byte bound counts.
pub trait WireSize {
    /// Bytes this item takes when written.
    fn wire_size(&self) -> usize;
}

/// The sending half: the center and the session's reader queue into it.
#[derive(Debug)]
pub struct Outbox<T> {
    /// Unbounded by items on purpose: [`Meter`] bounds it by bytes.
    tx: mpsc::UnboundedSender<(T, usize)>,
    meter: Arc<Meter>,
}

// Not derived: a derive would ask `T: Clone`, which items need not be.
impl<T> Clone for Outbox<T> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            meter: self.meter.clone(),
        }
    }
}

/// The receiving half: the session's writer takes from it.
#[derive(Debug)]
pub struct OutboxReceiver<T> {
    rx: mpsc::UnboundedReceiver<(T, usize)>,
    meter: Arc<Meter>,
}

/// A new, empty outbox holding at most `max_bytes` (but always one item).
pub fn outbox<T>(max_bytes: usize) -> (Outbox<T>, OutboxReceiver<T>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let meter = Arc::new(Meter {
        max_bytes,
        bytes: AtomicUsize::new(0),
        len: AtomicUsize::new(0),
    });
    (
        Outbox {
            tx,
            meter: meter.clone(),
        },
        OutboxReceiver { rx, meter },
    )
}

impl<T: WireSize> Outbox<T> {
    /// Queues `item` unless the session is over its byte bound (an empty
    /// outbox always takes it, however large).
    pub fn push(&self, item: T) -> Result<(), OutletError> {
        let size = item.wire_size();
        let m = &self.meter;
        let queued = m.bytes.load(Ordering::Relaxed);
        if queued > 0 && queued.saturating_add(size) > m.max_bytes {
            return Err(OutletError::Full);
        }
        m.len.fetch_add(1, Ordering::Relaxed);
        m.bytes.fetch_add(size, Ordering::Relaxed);
        self.tx.send((item, size)).map_err(|_| {
            m.len.fetch_sub(1, Ordering::Relaxed);
            m.bytes.fetch_sub(size, Ordering::Relaxed);
            OutletError::Closed
        })
    }
}

impl<T: From<Outbound> + WireSize + Send + 'static> Outlet for Outbox<T> {
    fn try_deliver(&self, item: Outbound) -> Result<(), OutletError> {
        self.push(T::from(item))
    }

    fn depth(&self) -> usize {
        self.meter.len.load(Ordering::Relaxed)
    }
}

impl<T> OutboxReceiver<T> {
    fn took(&self, size: usize) {
        self.meter.bytes.fetch_sub(size, Ordering::Relaxed);
        self.meter.len.fetch_sub(1, Ordering::Relaxed);
    }

    /// The next item; `None` when every sender is gone.
    pub async fn recv(&mut self) -> Option<T> {
        let (item, size) = self.rx.recv().await?;
        self.took(size);
        Some(item)
    }

    /// The next item if one is queued.
    pub fn try_recv(&mut self) -> Option<T> {
        let (item, size) = self.rx.try_recv().ok()?;
        self.took(size);
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        for _ in 0..100 {
            tx.push(text(10)).unwrap();
        }
        assert_eq!(tx.depth(), 100);
        assert_eq!(tx.push(text(1)).err(), Some(OutletError::Full));
    }
}
