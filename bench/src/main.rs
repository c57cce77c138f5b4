//! `pilot-bench`: the load tool. Drives any protoo center over ws or wss as
//! SFUs and MSUs do, checks correctness while it loads, and reports
//! throughput, latency percentiles and (with `--server-pid`) the server's
//! memory and CPU. `compare` runs a scenario against a bare relay and the
//! center in one invocation and prints the ratio.
//!
//! Only loopback targets are accepted; every run is bounded in time.

mod conn;
mod recovery;
mod relay;
mod report;
mod scenarios;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use report::Report;
use scenarios::{Ctx, SfuSettings};
use std::time::Duration;

/// Load tool for protoo signaling centers.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// The center's WebSocket URL (loopback only). Repeat it for the nodes
    /// of a cluster: sessions are spread over them in turn, and every
    /// delivery is still checked exactly once.
    #[arg(
        long = "url",
        default_value = "ws://127.0.0.1:9443/pilot/center",
        global = true,
        action = clap::ArgAction::Append
    )]
    urls: Vec<String>,
    /// Accept any TLS certificate (self-signed centers).
    #[arg(long, global = true)]
    insecure: bool,
    /// The server's pid: report its RSS and CPU seconds from /proc.
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// Print the results as JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Fail unless the measured figure reaches this value (used by `compare`
    /// for the ratio, by the others for their main throughput).
    #[arg(long, global = true)]
    min: Option<f64>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug, Clone)]
enum Scenario {
    /// C sessions doing closed-loop echo requests.
    Rtt {
        /// Sessions.
        #[arg(long, default_value_t = 16)]
        sessions: usize,
        /// Seconds of load.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    /// Rooms of N sessions, one sender in each.
    Fanout {
        /// Sessions in each room (one sends, the others receive).
        #[arg(long, default_value_t = 64)]
        sessions: usize,
        /// Rooms, each with a sender of its own.
        #[arg(long, default_value_t = 1)]
        rooms: usize,
        /// Messages per second; 0 sends as fast as the slowest receiver allows.
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Seconds of load.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Messages in flight (sent, not yet received by every receiver).
        #[arg(long, default_value_t = 512)]
        window: u64,
    },
    /// SFU sessions carrying many rooms through join, push, pull, text,
    /// disconnect/reconnect and leave, with one MSU answering invites.
    Sfu {
        /// SFU sessions (2..=63).
        #[arg(long, default_value_t = 16)]
        sessions: usize,
        /// Rooms.
        #[arg(long, default_value_t = 10_000)]
        rooms: usize,
        /// Users per room, each on a different session.
        #[arg(long, default_value_t = 4)]
        users_per_room: usize,
        /// Operations per second; 0: as fast as `inflight` allows.
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Operations awaiting their notifications at once.
        #[arg(long, default_value_t = 2048)]
        inflight: i64,
        /// Seconds a phase may wait for missing notifications; then the run
        /// stops and reports what is missing.
        #[arg(long, default_value_t = 30.0)]
        phase_timeout: f64,
        /// Only join (and keep) the users: for measuring state size.
        #[arg(long)]
        join_only: bool,
        /// With --join-only: seconds to hold the users before exiting.
        #[arg(long, default_value_t = 0.0)]
        hold: f64,
        /// Run without the MSU session (no invites).
        #[arg(long)]
        no_msu: bool,
    },
    /// Hold N joined sessions and report the server's memory per session.
    Idle {
        /// Sessions.
        #[arg(long, default_value_t = 1000)]
        sessions: usize,
        /// Spread connections over this many 127.0.0.x source addresses.
        #[arg(long, default_value_t = 4)]
        sources: usize,
        /// Seconds to hold them.
        #[arg(long, default_value_t = 5.0)]
        hold: f64,
    },
    /// Sessions connect, join, push and vanish without a close frame.
    Churn {
        /// Sessions per second.
        #[arg(long, default_value_t = 200)]
        rate: u64,
        /// Seconds of churn.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Rooms (one observer each).
        #[arg(long, default_value_t = 10)]
        rooms: usize,
    },
    /// An SFU with many users drops and comes back under its name: time
    /// until every pull reaches it again; nothing may be lost.
    Reconnect {
        /// Rooms (one observer joins them all).
        #[arg(long, default_value_t = 1000)]
        rooms: usize,
        /// Users on the SFU that drops.
        #[arg(long, default_value_t = 10_000)]
        users: usize,
        /// Failover instead: the pid of the center behind the first `--url`
        /// (a cluster node), killed with SIGKILL where the SFU would drop;
        /// the observer sits on the second URL, where the SFU comes back.
        #[arg(long)]
        kill: Option<u32>,
    },
    /// One SFU sends userReConnect + push for every user at once.
    Storm {
        /// Rooms (one observer joins them all).
        #[arg(long, default_value_t = 1000)]
        rooms: usize,
        /// Users (two messages each).
        #[arg(long, default_value_t = 10_000)]
        users: usize,
    },
    /// Serve the bare relay (the ceiling) on an address.
    Relay {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9543")]
        listen: String,
    },
    /// Run `fanout` or `rtt` against a bare relay and the center, several
    /// times alternating, and print medians and the center/relay ratio.
    Compare {
        /// `fanout` or `rtt`.
        #[arg(long, default_value = "fanout")]
        scenario: String,
        /// Sessions (per room for `fanout`).
        #[arg(long, default_value_t = 64)]
        sessions: usize,
        /// Rooms (`fanout`), each with a sender of its own.
        #[arg(long, default_value_t = 1)]
        rooms: usize,
        /// Seconds per run.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Runs against each (alternating), for medians.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// The relay's URL; without it a relay is started as a child process.
        #[arg(long)]
        relay_url: Option<String>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pilot-bench: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("pilot-bench: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn ctx(cli: &Cli, urls: &[String], server_pid: Option<u32>) -> Ctx {
    Ctx {
        target: conn::Target {
            urls: urls.to_vec(),
            insecure: cli.insecure,
        },
        server_pid,
        progress: !cli.json && std::io::IsTerminal::is_terminal(&std::io::stderr()),
    }
}

fn emit(cli: &Cli, reports: &[Report]) -> anyhow::Result<()> {
    if cli.json {
        println!("{}", serde_json::to_string_pretty(reports)?);
    } else {
        reports.iter().for_each(Report::print);
    }
    Ok(())
}

async fn one(cli: &Cli, scenario: &Scenario, urls: &[String]) -> anyhow::Result<Report> {
    one_on(cli, scenario, urls, cli.server_pid).await
}

/// One run of `scenario` against the server at `urls` (process
/// `server_pid`, when known, for its memory and CPU).
async fn one_on(
    cli: &Cli,
    scenario: &Scenario,
    urls: &[String],
    server_pid: Option<u32>,
) -> anyhow::Result<Report> {
    let c = ctx(cli, urls, server_pid);
    match scenario.clone() {
        Scenario::Rtt { sessions, seconds } => scenarios::rtt(&c, sessions, seconds).await,
        Scenario::Fanout {
            sessions,
            rooms,
            rate,
            seconds,
            window,
        } => {
            let settings = scenarios::FanoutSettings {
                sessions,
                rooms,
                rate,
                seconds,
                window,
            };
            scenarios::fanout(&c, settings).await
        }
        Scenario::Sfu {
            sessions,
            rooms,
            users_per_room,
            rate,
            inflight,
            phase_timeout,
            join_only,
            hold,
            no_msu,
        } => {
            let rep = scenarios::sfu(
                &c,
                SfuSettings {
                    sessions,
                    rooms,
                    users: users_per_room,
                    rate,
                    inflight,
                    phase_timeout: Duration::from_secs_f64(phase_timeout),
                    join_only,
                    msu: !no_msu,
                },
            )
            .await?;
            if hold > 0.0 {
                tokio::time::sleep(Duration::from_secs_f64(hold)).await;
            }
            Ok(rep)
        }
        Scenario::Idle {
            sessions,
            sources,
            hold,
        } => scenarios::idle(&c, sessions, sources, hold).await,
        Scenario::Churn {
            rate,
            seconds,
            rooms,
        } => scenarios::churn(&c, rate, seconds, rooms).await,
        Scenario::Reconnect { rooms, users, kill } => {
            recovery::reconnect(&c, rooms, users, kill).await
        }
        Scenario::Storm { rooms, users } => recovery::storm(&c, rooms, users).await,
        Scenario::Relay { .. } | Scenario::Compare { .. } => anyhow::bail!("not a load scenario"),
    }
}

/// How many cores a server and the load tool kept busy over one run
/// (`None` when unknown).
struct Busy {
    server: Option<f64>,
    tool: Option<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

async fn run(cli: Cli) -> anyhow::Result<bool> {
    match &cli.scenario {
        Scenario::Relay { listen } => {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("bind {listen}"))?;
            println!(
                "relay listening on ws://{}/pilot/center",
                listener.local_addr()?
            );
            relay::run(listener).await;
            Ok(true)
        }
        Scenario::Compare {
            scenario,
            sessions,
            rooms,
            seconds,
            runs,
            relay_url,
        } => {
            let (relay_url, mut child) = match relay_url {
                Some(u) => (u.clone(), None),
                None => {
                    let port = {
                        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
                        l.local_addr()?.port()
                    };
                    let child = tokio::process::Command::new(std::env::current_exe()?)
                        .args(["relay", "--listen", &format!("127.0.0.1:{port}")])
                        .stdout(std::process::Stdio::null())
                        .kill_on_drop(true)
                        .spawn()?;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    (format!("ws://127.0.0.1:{port}/pilot/center"), Some(child))
                }
            };
            let inner = match scenario.as_str() {
                "fanout" => Scenario::Fanout {
                    sessions: *sessions,
                    rooms: *rooms,
                    rate: 0,
                    seconds: *seconds,
                    window: 512,
                },
                "rtt" => Scenario::Rtt {
                    sessions: *sessions,
                    seconds: *seconds,
                },
                other => anyhow::bail!("compare runs fanout or rtt, not {other}"),
            };
            let relay_pid = child.as_ref().and_then(tokio::process::Child::id);
            let mut relay_figs = Vec::new();
            let mut center_figs = Vec::new();
            let mut cores: [Vec<Busy>; 2] = Default::default();
            let mut reports = Vec::new();
            let mut clean = true;
            for _ in 0..*runs {
                let relay = std::slice::from_ref(&relay_url);
                let targets = [
                    (relay, relay_pid, &mut relay_figs, 0),
                    (&cli.urls[..], cli.server_pid, &mut center_figs, 1),
                ];
                for (urls, pid, figs, which) in targets {
                    // Both processes' CPU, and the tool's own: a ratio is
                    // honest only when the servers, not the tool, saturate.
                    let tool_before = report::usage(std::process::id());
                    let started = std::time::Instant::now();
                    let mut rep = one_on(&cli, &inner, urls, pid).await?;
                    let wall = started.elapsed().as_secs_f64();
                    let busy = |b: Option<report::Usage>, a: Option<report::Usage>| {
                        Some((a?.cpu_seconds - b?.cpu_seconds) / wall)
                    };
                    let tool = busy(tool_before, report::usage(std::process::id()));
                    let server = busy(rep.server_before, rep.server_after);
                    if let Some(t) = tool {
                        rep.figures.push(("load tool CPU (cores busy)".into(), t));
                    }
                    if let Some(s) = server {
                        rep.figures.push(("server CPU (cores busy)".into(), s));
                    }
                    cores[which].push(Busy { server, tool });
                    if which == 0 {
                        rep.scenario = format!("{} (bare relay)", rep.scenario);
                    }
                    clean &= rep.errors.is_empty();
                    figs.push(rep.throughput.first().map_or(0.0, |t| t.1));
                    reports.push(rep);
                }
            }
            if let Some(c) = child.as_mut() {
                let _ = c.kill().await;
            }
            emit(&cli, &reports)?;
            let (r, c) = (median(relay_figs.clone()), median(center_figs.clone()));
            let ratio = if r > 0.0 { c / r } else { 0.0 };
            let what = reports
                .first()
                .and_then(|r| r.throughput.first())
                .map_or("", |t| t.0.as_str());
            println!(
                "\n{scenario} ({what}/s), median of {runs}: relay {r:.0} {relay_figs:.0?}, center {c:.0} {center_figs:.0?}; center/relay = {:.1}%",
                ratio * 100.0
            );
            let median_of = |v: &[Busy], pick: fn(&Busy) -> Option<f64>| {
                let got: Vec<f64> = v.iter().filter_map(pick).collect();
                if got.is_empty() {
                    "?".to_owned()
                } else {
                    format!("{:.2}", median(got))
                }
            };
            println!(
                "cores busy (median): relay {} with the tool at {}; center {} with the tool at {}{}",
                median_of(&cores[0], |c| c.server),
                median_of(&cores[0], |c| c.tool),
                median_of(&cores[1], |c| c.server),
                median_of(&cores[1], |c| c.tool),
                if cli.server_pid.is_none() {
                    " (pass --server-pid for the center's)"
                } else {
                    ""
                },
            );
            Ok(clean && cli.min.is_none_or(|m| ratio >= m))
        }
        scenario => {
            let rep = one(&cli, scenario, &cli.urls).await?;
            emit(&cli, std::slice::from_ref(&rep))?;
            let main = rep.throughput.first().map_or(0.0, |t| t.1);
            Ok(rep.errors.is_empty() && cli.min.is_none_or(|m| main >= m))
        }
    }
}
