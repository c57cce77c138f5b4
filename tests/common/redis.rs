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
    /// More arguments (`--replicaof`), or a sentinel's configuration file.
    role: Role,
}

/// What a server started by a test is.
#[derive(Clone)]
enum Role {
    Master,
    Replica {
        of: u16,
    },
    /// Runs with `--sentinel` on a configuration file in its directory
    /// that watches master `pilot` on this port.
    Sentinel {
        master: u16,
    },
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
        Self::start_as(name, persistent, Role::Master).await
    }

    async fn start_as(name: &str, persistent: bool, role: Role) -> Option<RedisServer> {
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
            role,
        };
        server.spawn(&bin).await;
        Some(server)
    }

    async fn spawn(&mut self, bin: &std::path::Path) {
        let appendonly = if self.persistent { "yes" } else { "no" };
        let mut command = std::process::Command::new(bin);
        match self.role {
            Role::Master => {}
            Role::Replica { of } => {
                command.args(["--replicaof", "127.0.0.1", &of.to_string()]);
            }
            Role::Sentinel { master } => {
                // A sentinel rewrites its file: each has its own.
                let conf = self.dir.join("sentinel.conf");
                std::fs::write(
                    &conf,
                    format!(
                        "sentinel resolve-hostnames no\n\
                         sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {master} 2\n\
                         sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
                         sentinel failover-timeout {SENTINEL_MASTER} 5000\n"
                    ),
                )
                .expect("sentinel.conf");
                command.arg(&conf).arg("--sentinel");
            }
        }
        if !matches!(self.role, Role::Sentinel { .. }) {
            command.args(["--save", "", "--appendonly", appendonly]);
            command.args(["--appendfsync", self.appendfsync]);
        }
        let child = command
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
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

/// The name the sentinels know the master by.
pub const SENTINEL_MASTER: &str = "pilot";

/// A master, its replica and three sentinels watching them (quorum 2), all
/// the test's own: Redis as run for high availability.
pub struct SentinelSet {
    /// The master at the start.
    pub master: RedisServer,
    /// Its replica (the master after a failover).
    pub replica: RedisServer,
    /// The sentinels.
    pub sentinels: Vec<RedisServer>,
}

impl SentinelSet {
    /// Starts the set and waits until it could fail over: the replica is in
    /// sync and every sentinel knows the replica and the other sentinels.
    pub async fn start(name: &str) -> Option<SentinelSet> {
        let master = RedisServer::start_as(&format!("{name}-master"), false, Role::Master).await?;
        let replica = RedisServer::start_as(
            &format!("{name}-replica"),
            false,
            Role::Replica { of: master.port },
        )
        .await?;
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let role = Role::Sentinel {
                master: master.port,
            };
            sentinels
                .push(RedisServer::start_as(&format!("{name}-sentinel{i}"), false, role).await?);
        }
        let set = SentinelSet {
            master,
            replica,
            sentinels,
        };
        let mut poll = super::Poll::new("the sentinels to know the replica and each other");
        loop {
            let mut ready = set
                .replica
                .info("replication")
                .await
                .contains("master_link_status:up");
            for s in &set.sentinels {
                let others: Vec<redis::Value> = s
                    .query(redis::cmd("SENTINEL").arg("SENTINELS").arg(SENTINEL_MASTER))
                    .await
                    .unwrap_or_default();
                let replicas: Vec<redis::Value> = s
                    .query(redis::cmd("SENTINEL").arg("REPLICAS").arg(SENTINEL_MASTER))
                    .await
                    .unwrap_or_default();
                ready &= others.len() == 2 && replicas.len() == 1;
            }
            if ready {
                return Some(set);
            }
            poll.again(&"not yet").await;
        }
    }

    /// The sentinels' URLs, for `cluster.sentinels`.
    pub fn urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("redis://127.0.0.1:{}", s.port))
            .collect()
    }

    /// The port of the server the sentinels name as master.
    pub async fn master_port(&self) -> Option<u16> {
        let named: Option<(String, String)> = self.sentinels[0]
            .query(
                redis::cmd("SENTINEL")
                    .arg("GET-MASTER-ADDR-BY-NAME")
                    .arg(SENTINEL_MASTER),
            )
            .await
            .ok()?;
        named.and_then(|(_, port)| port.parse().ok())
    }
}

impl RedisServer {
    /// Runs one command on this server.
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}", self.port))?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        cmd.query_async(&mut conn).await
    }

    /// `INFO section`, or nothing if it does not answer.
    pub async fn info(&self, section: &str) -> String {
        self.query(redis::cmd("INFO").arg(section))
            .await
            .unwrap_or_default()
    }
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 0");
    l.local_addr().expect("addr").port()
}
