//! A `redis-server` of the test's own, on a free port, stopped when dropped.
//! No test uses a Redis it did not start.

use std::path::PathBuf;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A running `redis-server` owned by one test.
pub struct RedisServer {
    child: Option<std::process::Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    persistent: bool,
    /// `appendfsync` when persistent: `always` unless a test says.
    appendfsync: &'static str,
}

/// Where `redis-server` is, if installed.
fn binary() -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("redis-server"))
            .find(|p| p.is_file())
    })
}

impl RedisServer {
    /// Starts a Redis for the test, or says why not: without `redis-server`
    /// a developer's run skips the test loudly; CI (which installs it)
    /// fails.
    pub async fn start(name: &str, persistent: bool) -> Option<RedisServer> {
        let Some(bin) = binary() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server is not installed (apt-get install redis-server); .ci/run installs it"
            );
            eprintln!("SKIPPED: redis-server is not installed (apt-get install redis-server)");
            return None;
        };
        // Tests of one binary run at once: each Redis gets a directory of its own.
        static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("pilot-redis-{name}-{}-{n}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        std::fs::create_dir_all(&dir).expect("redis dir");
        let port = free_port();
        let mut server = RedisServer {
            child: None,
            port,
            dir,
            persistent,
            appendfsync: "always",
        };
        server.spawn(&bin).await;
        Some(server)
    }

    async fn spawn(&mut self, bin: &std::path::Path) {
        let appendonly = if self.persistent { "yes" } else { "no" };
        let child = std::process::Command::new(bin)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", ""])
            .args([
                "--appendonly",
                appendonly,
                "--appendfsync",
                self.appendfsync,
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let mut poll = super::Poll::new("redis-server to answer PING");
        while !self.pong().await {
            poll.again(&"no PONG yet").await;
        }
    }

    async fn pong(&self) -> bool {
        let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        if s.write_all(b"PING\r\n").await.is_err() {
            return false;
        }
        let mut buf = [0u8; 7];
        matches!(
            tokio::time::timeout(Duration::from_secs(1), s.read_exact(&mut buf)).await,
            Ok(Ok(_)) if &buf == b"+PONG\r\n"
        )
    }

    /// The URL centers are configured with.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server (SIGKILL) and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Switches to `appendfsync everysec` (Redis's usual setting, which may
    /// lose the last second of writes when killed) and starts again.
    pub async fn restart_everysec(&mut self) {
        self.appendfsync = "everysec";
        self.restart().await;
    }

    /// Starts it again on the same port and directory (with `persistent`,
    /// it loads what it had).
    pub async fn restart(&mut self) {
        self.kill();
        let bin = binary().expect("redis-server");
        self.spawn(&bin).await;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 0");
    l.local_addr().expect("addr").port()
}
