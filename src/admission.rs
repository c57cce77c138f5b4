//! Admission before authentication: how many connections (or sessions)
//! may be open at once, in all and from one peer address. Both network
//! front ends count with it, so the work anyone can cause before showing a
//! token is bounded.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// Which bound a count hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The bound in all.
    Total,
    /// The bound of one peer address.
    PerIp,
}

/// Counts sessions (or handshakes), in all and per peer address, against
/// the limits.
pub struct Slots {
    max_total: usize,
    max_per_ip: usize,
    /// (sessions in all, sessions per peer address). Held only to count.
    counts: parking_lot::Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One session's place; given back when dropped.
pub struct Slot {
    slots: Arc<Slots>,
    ip: IpAddr,
}

impl Slots {
    /// Counts against `max_total` in all and `max_per_ip` per address
    /// (0: no bound).
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_ip,
            counts: parking_lot::Mutex::new((0, HashMap::new())),
        })
    }

    /// Takes a place for `ip`, or says which bound is reached.
    pub fn take(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Full> {
        let mut counts = self.counts.lock();
        if self.max_total > 0 && counts.0 >= self.max_total {
            return Err(Full::Total);
        }
        let per_ip = counts.1.entry(ip).or_default();
        if self.max_per_ip > 0 && *per_ip >= self.max_per_ip {
            return Err(Full::PerIp);
        }
        *per_ip += 1;
        counts.0 += 1;
        Ok(Slot {
            slots: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.slots.counts.lock();
        counts.0 -= 1;
        if let Some(n) = counts.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.1.remove(&self.ip);
            }
        }
    }
}

/// A connection that holds its place while open, and must show it speaks
/// by sending its first [`FIRST_BYTES`] within a deadline: a peer that
/// connects and stays silent (or drips) is dropped instead of holding its
/// place for ever (slowloris).
pub struct Admitted {
    io: tokio::net::TcpStream,
    _slot: Slot,
    /// Until the first bytes came: when they must have come by.
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    read: usize,
}

/// What a peer must send within the handshake deadline: an HTTP/2 preface
/// is 24 bytes, a TLS ClientHello more.
pub const FIRST_BYTES: usize = 24;

impl Admitted {
    /// `io`, holding `slot`, with `within` to send its first bytes.
    pub fn new(io: tokio::net::TcpStream, slot: Slot, within: std::time::Duration) -> Self {
        Self {
            io,
            _slot: slot,
            deadline: Some(Box::pin(tokio::time::sleep(within))),
            read: 0,
        }
    }
}

impl tokio::io::AsyncRead for Admitted {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::future::Future as _;
        use std::task::Poll;
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            self.read += buf.filled().len() - before;
            if self.read >= FIRST_BYTES {
                self.deadline = None;
            }
        }
        if let Some(deadline) = self.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the peer did not start its handshake in time",
            )));
        }
        polled
    }
}

impl tokio::io::AsyncWrite for Admitted {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Admitted {
    /// The peer's address.
    pub fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.io.peer_addr()
    }
}

impl tonic::transport::server::Connected for Admitted {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// The connections `listener` accepts, admitted by `slots`, each with
/// `within` to send its first bytes. The others are closed at once and
/// counted in `metrics` under `dropped` (the kind for the bound in all, the
/// kind for the bound per address). An accept error (out of file
/// descriptors, say) is logged, and the others are served on.
pub fn admitted(
    listener: tokio::net::TcpListener,
    slots: Arc<Slots>,
    within: std::time::Duration,
    metrics: Arc<crate::metrics::Metrics>,
    dropped: [&'static str; 2],
) -> impl futures_util::Stream<Item = std::io::Result<Admitted>> {
    futures_util::stream::unfold(listener, move |listener| {
        let (slots, metrics) = (slots.clone(), metrics.clone());
        async move {
            loop {
                match listener.accept().await {
                    Ok((io, peer)) => match slots.take(peer.ip()) {
                        Ok(slot) => {
                            let _ = io.set_nodelay(true);
                            return Some((Ok(Admitted::new(io, slot, within)), listener));
                        }
                        Err(Full::Total) => metrics.connection_dropped(dropped[0]),
                        Err(Full::PerIp) => metrics.connection_dropped(dropped[1]),
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        }
    })
}
