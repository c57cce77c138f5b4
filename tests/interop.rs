//! Interop with clients nobody here wrote: npm `protoo-client` over wss, and
//! a Python gRPC client that only uses server reflection. They need Node and
//! Python packages, so they are `#[ignore]`d in a plain `cargo test` and run
//! by `.ci/run` (which installs the packages) with `--ignored`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use tokio::process::Command;

/// Runs a client to completion; it is killed if the test's bound fires first.
async fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop"))
        .kill_on_drop(true)
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{program} {args:?} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs node and tests/interop/node_modules (npm ci); run by .ci/run"]
async fn npm_protoo_client_over_wss() {
    common::bounded(async move {
        let server = common::start_tls().await;
        let url = server.ws_url();
        run("node", &["protoo_client.js", &url]).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs python3 with tests/interop/requirements.txt; run by .ci/run"]
async fn python_grpc_client_through_reflection_only() {
    common::bounded(async move {
        let server = common::start().await;
        let grpc = server.grpc_addr().unwrap().to_string();
        let url = server.ws_url();
        run("python3", &["reflection_client.py", &grpc, &url]).await;
    })
    .await;
}
