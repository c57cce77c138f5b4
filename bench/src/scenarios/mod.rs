//! The load scenarios. Each one checks correctness while it loads: every
//! expected notification must arrive exactly once at each expected session,
//! nothing unexpected may arrive, and every request must be answered.

use crate::conn::{self, Target, Ws};
use crate::report::{self, Report, Usage};
use futures_util::{SinkExt, StreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

mod churn;
mod fanout;
mod idle;
mod rtt;
mod sfu;

pub use churn::churn;
pub use fanout::{FanoutSettings, fanout};
pub use idle::idle;
pub use rtt::rtt;
pub use sfu::{SfuSettings, sfu};

/// What every scenario needs.
#[derive(Clone)]
pub struct Ctx {
    /// The center (or relay) under load.
    pub target: Target,
    /// The server's pid, for /proc figures.
    pub server_pid: Option<u32>,
    /// Draw progress bars.
    pub progress: bool,
}

impl Ctx {
    pub(crate) fn bar(&self, len: u64, what: &str) -> ProgressBar {
        if !self.progress {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(len);
        if let Ok(style) =
            ProgressStyle::with_template("{msg:>12} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what.to_owned());
        bar
    }

    pub(crate) fn usage(&self) -> Option<Usage> {
        self.server_pid.and_then(report::usage)
    }

    pub(crate) fn report(&self, scenario: &str, seconds: f64) -> Report {
        Report {
            scenario: scenario.to_owned(),
            url: self.target.describe(),
            seconds,
            throughput: Vec::new(),
            latency: Vec::new(),
            figures: Vec::new(),
            errors: Vec::new(),
            server_before: None,
            server_after: None,
        }
    }
}

/// The fields of an incoming frame the scenarios look at.
#[derive(Deserialize)]
pub(crate) struct Incoming<'a> {
    #[serde(default)]
    request: bool,
    #[serde(default)]
    response: bool,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub(crate) method: Option<&'a str>,
    #[serde(borrow, default)]
    pub(crate) data: Option<Data<'a>>,
}

#[derive(Deserialize, Default)]
pub(crate) struct Data<'a> {
    /// Bench key: identifies the operation a notification belongs to.
    #[serde(default)]
    pub(crate) bk: Option<u64>,
    #[serde(borrow, default, rename = "userId")]
    pub(crate) user_id: Option<&'a str>,
    #[serde(borrow, default)]
    message: Option<&'a str>,
}

pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Sends a request on a bare connection and waits for the frame that
/// carries its id (a response, or the relay's echo of the request).
pub(crate) async fn request(ws: &mut Ws, id: u64, method: &str, data: &str) -> anyhow::Result<()> {
    let text = format!(r#"{{"request":true,"id":{id},"method":"{method}","data":{data}}}"#);
    ws.send(Message::Text(Utf8Bytes::from(text))).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let frame = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| anyhow::anyhow!("no answer to {method} within 10 s"))?
            .ok_or_else(|| anyhow::anyhow!("connection closed during {method}"))??;
        if let Message::Text(t) = frame
            && let Ok(m) = serde_json::from_str::<Incoming<'_>>(&t)
            && m.id.is_some_and(|i| i.get() == id.to_string())
        {
            return Ok(());
        }
    }
}

/// Opens `n` connections, 64 at a time, each joined as `user(i)` to `room(i)`.
async fn open_joined(
    ctx: &Ctx,
    n: usize,
    sources: usize,
    room: impl Fn(usize) -> String + Send + Sync + 'static,
    user: impl Fn(usize) -> String + Send + Sync + 'static,
) -> anyhow::Result<Vec<Ws>> {
    let bar = ctx.bar(n as u64, "connect");
    let (room, user) = (Arc::new(room), Arc::new(user));
    let mut out: Vec<Option<Ws>> = (0..n).map(|_| None).collect();
    let mut start = 0;
    while start < n {
        let end = (start + 64).min(n);
        let mut batch = tokio::task::JoinSet::new();
        for i in start..end {
            let (target, room, user) = (ctx.target.clone(), room.clone(), user.clone());
            let source =
                (sources > 1).then(|| std::net::IpAddr::from([127, 0, 0, 1 + (i % sources) as u8]));
            batch.spawn(async move {
                let mut ws = conn::connect(&target, source).await?;
                let data = format!(
                    r#"{{"roomId":"{}","userId":"{}","userName":"{}"}}"#,
                    room(i),
                    user(i),
                    user(i)
                );
                request(&mut ws, 1, "join", &data).await?;
                anyhow::Ok((i, ws))
            });
        }
        while let Some(r) = batch.join_next().await {
            let (i, ws) = r??;
            out[i] = Some(ws);
            bar.inc(1);
        }
        start = end;
    }
    bar.finish_and_clear();
    Ok(out.into_iter().flatten().collect())
}
