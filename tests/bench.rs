//! `pilot-bench` against real centers: sessions spread over several URLs,
//! and its exactly-once check, which must catch centers that do not share
//! state (what a broken cluster would look like).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use pilot_center::server::Server;

/// Runs `pilot-bench sfu` over `urls`, giving up on missing notifications
/// after `phase_timeout` seconds; returns (success, stdout).
async fn bench_sfu(urls: &[String], phase_timeout: &str) -> (bool, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_pilot-bench"));
    for url in urls {
        command.args(["--url", url]);
    }
    let out = command
        .args([
            "sfu",
            "--sessions",
            "4",
            "--rooms",
            "20",
            "--users-per-room",
            "2",
        ])
        .args(["--phase-timeout", phase_timeout])
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    (out.status.success(), stdout)
}

async fn start_unlimited() -> Server {
    let config = common::config_full(false, "", "", "", "  messages_per_sec: 0\n", "");
    Server::start(&config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_spread_over_several_urls_and_every_delivery_is_checked() {
    common::bounded(async move {
        // One center under two URLs: the state is shared, so all is delivered.
        let server = start_unlimited().await;
        let url = server.ws_url();
        let (ok, out) = bench_sfu(&[url.clone(), url.clone()], "30").await;
        assert!(ok, "{out}");
        assert!(
            out.contains("every expected message arrived exactly once"),
            "{out}"
        );
        assert!(
            out.contains(&format!("{url},{url}")),
            "the report names both: {out}"
        );

        // Two centers that share nothing: the sessions really are spread over
        // both, and the check sees what went missing (soon: those
        // notifications can never come).
        let other = start_unlimited().await;
        let (ok, out) = bench_sfu(&[url, other.ws_url()], "2").await;
        assert!(!ok, "split state must fail the check: {out}");
        assert!(out.contains("notifications"), "{out}");
    })
    .await;
}
