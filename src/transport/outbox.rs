//! A WebSocket session's outbound queue, bounded in bytes and in age rather
//! than in items (PROTOCOL.md §6): one mass event (an SFU carrying 20,000
//! users dropping) queues 20,000 small notifications to each other SFU in
//! one step, which healthy peers absorb; a peer that does not read is found
//! by what it leaves unsent (bytes) or by how long nothing moved (age).

use super::session::WsOut;
use crate::center::{Outbound, Outlet, OutletError};
use crate::clock::Clock;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

/// The bounds of one outbox.
#[derive(Debug, Clone)]
pub struct OutboxLimits {
    /// Bytes queued and unsent before the session is a slow consumer.
    pub max_bytes: usize,
    /// Time queued items may sit with nothing sent.
    pub max_delay: Duration,
    /// The time `max_delay` is counted in.
    pub clock: Clock,
}

/// What the sending and receiving halves share.
#[derive(Debug)]
struct Meter {
    limits: OutboxLimits,
    /// Bytes queued and not yet taken by the writer.
    bytes: AtomicUsize,
    /// Items queued and not yet taken.
    len: AtomicUsize,
    /// Clock time (ns) of the last progress: an item taken, or the first
    /// item queued into an empty outbox.
    progress_ns: AtomicU64,
}

impl Meter {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.limits.clock.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// The sending half: the center and the session's reader queue into it.
#[derive(Debug, Clone)]
pub struct Outbox {
    tx: mpsc::UnboundedSender<(WsOut, usize)>,
    meter: Arc<Meter>,
}

/// The receiving half: the session's writer takes from it.
#[derive(Debug)]
pub struct OutboxReceiver {
    rx: mpsc::UnboundedReceiver<(WsOut, usize)>,
    meter: Arc<Meter>,
}

/// A new, empty outbox.
pub fn outbox(limits: OutboxLimits) -> (Outbox, OutboxReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let meter = Arc::new(Meter {
        limits,
        bytes: AtomicUsize::new(0),
        len: AtomicUsize::new(0),
        progress_ns: AtomicU64::new(0),
    });
    (
        Outbox {
            tx,
            meter: meter.clone(),
        },
        OutboxReceiver { rx, meter },
    )
}

/// Roughly what an item costs on the wire.
fn size_of(item: &WsOut) -> usize {
    match item {
        WsOut::Text(t) => t.len(),
        WsOut::Center(Outbound::Event(d)) => d.size,
        WsOut::Center(Outbound::Invite { room_id }) => 64 + room_id.len(),
    }
}

impl Outbox {
    /// Queues `item` unless the session is over its byte bound (an empty
    /// outbox always takes it, however large).
    pub fn push(&self, item: WsOut) -> Result<(), OutletError> {
        let size = size_of(&item);
        let m = &self.meter;
        let queued = m.bytes.load(Ordering::Relaxed);
        if queued > 0 && queued.saturating_add(size) > m.limits.max_bytes {
            return Err(OutletError::Full);
        }
        if m.len.fetch_add(1, Ordering::Relaxed) == 0 {
            m.progress_ns.store(m.now_ns(), Ordering::Relaxed);
        }
        m.bytes.fetch_add(size, Ordering::Relaxed);
        self.tx.send((item, size)).map_err(|_| {
            m.len.fetch_sub(1, Ordering::Relaxed);
            m.bytes.fetch_sub(size, Ordering::Relaxed);
            OutletError::Closed
        })
    }

    /// Whether queued items have sat longer than the bound with nothing sent.
    pub fn is_stalled(&self) -> bool {
        let m = &self.meter;
        if m.len.load(Ordering::Relaxed) == 0 {
            return false;
        }
        let idle = m
            .now_ns()
            .saturating_sub(m.progress_ns.load(Ordering::Relaxed));
        Duration::from_nanos(idle) > m.limits.max_delay
    }
}

impl Outlet for Outbox {
    fn try_deliver(&self, item: Outbound) -> Result<(), OutletError> {
        self.push(WsOut::Center(item))
    }

    fn depth(&self) -> usize {
        self.meter.len.load(Ordering::Relaxed)
    }
}

impl OutboxReceiver {
    fn took(&self, size: usize) {
        let m = &self.meter;
        m.bytes.fetch_sub(size, Ordering::Relaxed);
        m.len.fetch_sub(1, Ordering::Relaxed);
        m.progress_ns.store(m.now_ns(), Ordering::Relaxed);
    }

    /// The next item; `None` when every sender is gone.
    pub async fn recv(&mut self) -> Option<WsOut> {
        let (item, size) = self.rx.recv().await?;
        self.took(size);
        Some(item)
    }

    /// The next item if one is queued.
    pub fn try_recv(&mut self) -> Option<WsOut> {
        let (item, size) = self.rx.try_recv().ok()?;
        self.took(size);
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::Utf8Bytes;

    fn text(n: usize) -> WsOut {
        WsOut::Text(Utf8Bytes::from("x".repeat(n)))
    }

    #[test]
    fn bounded_by_bytes_not_items_and_an_empty_outbox_takes_anything() {
        let clock = Clock::manual();
        let (tx, mut rx) = outbox(OutboxLimits {
            max_bytes: 1000,
            max_delay: Duration::from_secs(30),
            clock,
        });
        assert!(tx.push(text(5000)).is_ok(), "one large item always goes");
        assert_eq!(tx.push(text(1)), Err(OutletError::Full));
        assert!(rx.try_recv().is_some());
        for _ in 0..100 {
            tx.push(text(10)).unwrap();
        }
        assert_eq!(tx.depth(), 100);
        assert_eq!(tx.push(text(1)), Err(OutletError::Full));
    }

    #[test]
    fn items_left_unsent_too_long_make_a_stall() {
        let clock = Clock::manual();
        let (tx, mut rx) = outbox(OutboxLimits {
            max_bytes: 1 << 20,
            max_delay: Duration::from_secs(30),
            clock: clock.clone(),
        });
        // Idle for long, then one item: the wait counts from the item.
        clock.advance(Duration::from_secs(100));
        tx.push(text(1)).unwrap();
        tx.push(text(1)).unwrap();
        clock.advance(Duration::from_secs(30));
        assert!(!tx.is_stalled());
        // Progress resets the wait.
        rx.try_recv().unwrap();
        clock.advance(Duration::from_secs(30));
        assert!(!tx.is_stalled());
        clock.advance(Duration::from_secs(1));
        assert!(tx.is_stalled());
        rx.try_recv().unwrap();
        assert!(!tx.is_stalled(), "nothing queued, nothing stalled");
    }
}
