//! Results: latency histograms, the summary table, JSON, and the server's
//! resource use read from /proc.

use hdrhistogram::Histogram;
use serde::Serialize;

/// A latency histogram in microseconds (1 µs .. 60 s, 3 significant digits).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| std::process::exit(2))
}

/// One row of the latency table.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// What was measured.
    pub kind: String,
    /// Samples.
    pub count: u64,
    /// Percentiles and max, milliseconds.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Maximum.
    pub max_ms: f64,
}

impl Latency {
    /// Summarizes `h`.
    pub fn of(kind: &str, h: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            kind: kind.to_owned(),
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
        }
    }
}

/// The server's resource use, from /proc/PID.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Usage {
    /// Resident set size now, KiB.
    pub rss_kib: u64,
    /// Peak resident set size, KiB.
    pub peak_rss_kib: u64,
    /// User + system CPU seconds since the process started.
    pub cpu_seconds: f64,
}

/// Reads /proc/PID/status and /proc/PID/stat.
pub fn usage(pid: u32) -> Option<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): utime is the 14th field.
    let after = stat.rsplit_once(") ")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Usage {
        rss_kib: field("VmRSS:")?,
        peak_rss_kib: field("VmHWM:")?,
        // USER_HZ is 100 on Linux.
        cpu_seconds: ticks as f64 / 100.0,
    })
}

/// A whole run's results.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Target URL.
    pub url: String,
    /// Seconds of load.
    pub seconds: f64,
    /// Named throughput figures (per second).
    pub throughput: Vec<(String, f64)>,
    /// Latency rows.
    pub latency: Vec<Latency>,
    /// Other named figures.
    pub figures: Vec<(String, f64)>,
    /// Correctness failures (lost, duplicated or unexpected messages, errors).
    pub errors: Vec<String>,
    /// Server usage before and after, when `--server-pid` was given.
    pub server_before: Option<Usage>,
    /// After the load.
    pub server_after: Option<Usage>,
}

impl Report {
    /// Prints the summary table.
    pub fn print(&self) {
        println!(
            "\n== {} against {} ({:.1} s)",
            self.scenario, self.url, self.seconds
        );
        for (name, v) in &self.throughput {
            println!("  {name:<34} {v:>14.0} /s");
        }
        for (name, v) in &self.figures {
            println!("  {name:<34} {v:>14.2}");
        }
        if !self.latency.is_empty() {
            println!(
                "  {:<22} {:>9} {:>9} {:>9} {:>9} {:>9}",
                "latency (ms)", "count", "p50", "p90", "p99", "max"
            );
            for l in &self.latency {
                println!(
                    "  {:<22} {:>9} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                    l.kind, l.count, l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
                );
            }
        }
        if let (Some(b), Some(a)) = (self.server_before, self.server_after) {
            println!(
                "  server: rss {} -> {} KiB, peak {} KiB, cpu {:.2} s during the run",
                b.rss_kib,
                a.rss_kib,
                a.peak_rss_kib,
                a.cpu_seconds - b.cpu_seconds
            );
        }
        if self.errors.is_empty() {
            println!(
                "  correctness: every expected message arrived exactly once, nothing unexpected"
            );
        } else {
            println!("  ERRORS ({}):", self.errors.len());
            for e in self.errors.iter().take(20) {
                println!("    {e}");
            }
        }
    }
}
