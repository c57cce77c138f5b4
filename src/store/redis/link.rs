//! A connection to the Redis that holds the log, which follows a Sentinel
//! failover.
//!
//! With a plain URL a [`Link`] is a [`ConnectionManager`]: it reconnects to
//! the same address by itself. With Sentinel the master's address changes
//! on failover, and a connection manager keeps dialling the old one (or,
//! once the old master is back as a replica, gets `READONLY` on every
//! write). So after any error other than a script's own, a link asks the
//! sentinels which server is the master now, and when it is another one,
//! every link of the node moves there. The error itself still goes to the
//! caller, which retries as it does for any Redis error.

use parking_lot::Mutex;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{Client, Cmd, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Where the log's Redis is: one address, or whichever server a set of
/// sentinels names as the master of a service.
pub(crate) enum Target {
    /// `cluster.redis_url`.
    Direct(Box<Client>),
    /// `cluster.sentinels` and `cluster.sentinel_master`.
    Sentinel(Arc<Sentinels>),
}

/// The sentinels of one master, shared by all links of a node.
pub(crate) struct Sentinels {
    client: tokio::sync::Mutex<SentinelClient>,
    /// Bumped every time the master moved; a link that has seen an older
    /// one reconnects.
    master: Mutex<Master>,
    /// How long asking the sentinels may take.
    timeout: Duration,
}

struct Master {
    client: Client,
    /// Increases with every move.
    generation: u64,
    /// When the sentinels were last asked, so a burst of errors asks once.
    asked: Instant,
}

/// Sentinels are asked at most this often.
const ASK_AT_MOST_EVERY: Duration = Duration::from_millis(200);

impl Target {
    /// The target `redis_url` names, or that the sentinels name (with the
    /// master's credentials, database and TLS taken from `redis_url`, whose
    /// host is then not used).
    pub(crate) async fn new(
        redis_url: &str,
        sentinels: &[String],
        master: &str,
        timeout: Duration,
    ) -> Result<Target, RedisError> {
        if sentinels.is_empty() {
            return Ok(Target::Direct(Box::new(Client::open(redis_url)?)));
        }
        let mut node = SentinelNodeConnectionInfo::default();
        if !redis_url.is_empty() {
            let info = redis_url.into_connection_info()?;
            node = node.set_redis_connection_info(info.redis_settings().clone());
            if let redis::ConnectionAddr::TcpTls { insecure, .. } = info.addr() {
                node = node.set_tls_mode(if *insecure {
                    redis::TlsMode::Insecure
                } else {
                    redis::TlsMode::Secure
                });
            }
        }
        let mut client = SentinelClient::build(
            sentinels.iter().map(String::as_str).collect(),
            master,
            Some(node),
            SentinelServerType::Master,
        )?;
        let first = ask(&mut client, timeout).await?;
        Ok(Target::Sentinel(Arc::new(Sentinels {
            client: tokio::sync::Mutex::new(client),
            master: Mutex::new(Master {
                client: first,
                generation: 0,
                asked: Instant::now(),
            }),
            timeout,
        })))
    }

    /// A new link with its own connection and `config`.
    pub(crate) async fn connect(
        &self,
        config: ConnectionManagerConfig,
    ) -> Result<Link, RedisError> {
        match self {
            Target::Direct(client) => Ok(Link {
                conn: ConnectionManager::new_with_config((**client).clone(), config.clone())
                    .await?,
                sentinels: None,
                generation: 0,
                config,
            }),
            Target::Sentinel(s) => {
                // One quick retry: after that the error comes back, and the
                // sentinels are asked, instead of dialling a dead master
                // for seconds.
                let config = config.set_number_of_retries(1);
                let (client, generation) = s.current();
                Ok(Link {
                    conn: ConnectionManager::new_with_config(client, config.clone()).await?,
                    sentinels: Some(s.clone()),
                    generation,
                    config,
                })
            }
        }
    }
}

async fn ask(client: &mut SentinelClient, timeout: Duration) -> Result<Client, RedisError> {
    tokio::time::timeout(timeout, client.async_get_client())
        .await
        .map_err(|_| {
            RedisError::from((redis::ErrorKind::Io, "no sentinel named the master in time"))
        })?
}

impl Sentinels {
    /// The master as last named, and its generation.
    fn current(&self) -> (Client, u64) {
        let m = self.master.lock();
        (m.client.clone(), m.generation)
    }

    /// Asks the sentinels which server is the master (unless someone just
    /// did); returns the current client and generation.
    async fn refresh(&self) -> (Client, u64) {
        let recently = || self.master.lock().asked.elapsed() < ASK_AT_MOST_EVERY;
        if recently() {
            return self.current();
        }
        let mut sentinel = self.client.lock().await;
        // Someone may have asked while this one waited for the client.
        if recently() {
            return self.current();
        }
        let named = ask(&mut sentinel, self.timeout).await;
        let mut m = self.master.lock();
        m.asked = Instant::now();
        match named {
            Ok(client)
                if client.get_connection_info().addr() != m.client.get_connection_info().addr() =>
            {
                tracing::warn!(
                    from = %m.client.get_connection_info().addr(),
                    to = %client.get_connection_info().addr(),
                    "the sentinels name another master: the node moves to it"
                );
                m.client = client;
                m.generation += 1;
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "no sentinel answered"),
        }
        (m.client.clone(), m.generation)
    }
}

/// One connection to the log's Redis (see the module's doc).
#[derive(Clone)]
pub(crate) struct Link {
    conn: ConnectionManager,
    sentinels: Option<Arc<Sentinels>>,
    /// The master generation `conn` talks to.
    generation: u64,
    config: ConnectionManagerConfig,
}

impl Link {
    /// After an error: with Sentinel, moves to the master the sentinels name
    /// if it is another one than this link talks to.
    async fn follow_master(&mut self) {
        let Some(sentinels) = self.sentinels.clone() else {
            return;
        };
        let named = sentinels.refresh().await;
        self.move_to(named, sentinels.timeout).await;
    }

    /// Moves to the current master if another link already found it moved.
    async fn catch_up(&mut self) {
        let Some(sentinels) = &self.sentinels else {
            return;
        };
        let current = sentinels.current();
        let timeout = sentinels.timeout;
        self.move_to(current, timeout).await;
    }

    /// Reconnects to `master` unless this link already talks to it (a
    /// failed attempt is tried again on the next command).
    async fn move_to(&mut self, (client, generation): (Client, u64), timeout: Duration) {
        if generation == self.generation {
            return;
        }
        let connect = ConnectionManager::new_with_config(client, self.config.clone());
        if let Ok(Ok(conn)) = tokio::time::timeout(timeout, connect).await {
            self.conn = conn;
            self.generation = generation;
        }
    }
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            self.catch_up().await;
            let reply = self.conn.req_packed_command(cmd).await;
            if reply.is_err() {
                self.follow_master().await;
            }
            reply
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            self.catch_up().await;
            let reply = self.conn.req_packed_commands(pipeline, offset, count).await;
            if reply.is_err() {
                self.follow_master().await;
            }
            reply
        })
    }

    fn get_db(&self) -> i64 {
        self.conn.get_db()
    }
}
