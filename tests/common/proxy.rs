//! A TCP proxy a test controls, between a node and its Redis: it passes
//! bytes, or holds them (a blackhole: connections stay open, nothing
//! moves), or delays them, or cuts every connection and refuses new ones.

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Bytes pass.
    Pass,
    /// Connections stay open; nothing moves either way.
    Blackhole,
    /// Every connection is closed, new ones too.
    Cut,
    /// Bytes pass, each read held this long first (a slow network).
    Delay(std::time::Duration),
}

/// A running proxy; stops when dropped.
pub struct Proxy {
    /// Where nodes connect.
    pub addr: SocketAddr,
    mode: Arc<watch::Sender<Mode>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// A proxy to `target` on a free port of 127.0.0.1, passing bytes.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mode = Arc::new(watch::Sender::new(Mode::Pass));
        let m = mode.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if *m.borrow() == Mode::Cut {
                    continue;
                }
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                tokio::spawn(relay(client, server, m.subscribe()));
            }
        });
        Proxy { addr, mode, task }
    }

    /// Switches what it does.
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// The URL a node uses to reach Redis through it.
    pub fn redis_url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Moves bytes both ways while the mode lets it; ends on a cut.
async fn relay(client: TcpStream, server: TcpStream, mut mode: watch::Receiver<Mode>) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let (mut up, mut down) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    loop {
        let current = *mode.borrow_and_update();
        match current {
            Mode::Cut => return,
            Mode::Blackhole => {
                if mode.changed().await.is_err() {
                    return;
                }
            }
            Mode::Pass | Mode::Delay(_) => {
                let (read, upward) = tokio::select! {
                    r = cr.read(&mut up) => (r, true),
                    r = sr.read(&mut down) => (r, false),
                    changed = mode.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        continue;
                    }
                };
                let Ok(n @ 1..) = read else { return };
                // The injected fault itself (a slow link), not a wait for
                // anything: each chunk is held this long before it goes on.
                if let Mode::Delay(delay) = current {
                    tokio::time::sleep(delay).await;
                }
                let written = if upward {
                    sw.write_all(&up[..n]).await
                } else {
                    cw.write_all(&down[..n]).await
                };
                if written.is_err() {
                    return;
                }
            }
        }
    }
}
