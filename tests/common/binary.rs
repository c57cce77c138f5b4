//! The center's binary as a child process, for tests of what only a real
//! process shows (signals, logs, `kill -9`).

use super::WAIT;

/// The center's binary on a configuration of its own, its log read as it
/// comes.
pub struct Binary {
    /// The process.
    pub child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>,
    /// Everything logged so far, one line after another.
    pub log: String,
    /// Listeners seen in the log: (what, address).
    listening: Vec<(String, String)>,
    dir: std::path::PathBuf,
}

impl Binary {
    /// Starts `pilot-center CONFIG ARGS` on `yaml`, logging without colour.
    pub async fn start(name: &str, yaml: &str, args: &[&str]) -> Binary {
        let dir = std::env::temp_dir().join(format!("pilot-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("center.yaml");
        std::fs::write(&config, yaml).unwrap();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pilot-center"))
            .arg(&config)
            .args(args)
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
            child.stderr.take().unwrap(),
        ));
        Binary {
            child,
            lines,
            log: String::new(),
            listening: Vec::new(),
            dir,
        }
    }

    /// The next log line; `None` once the process closed its stderr.
    pub async fn line(&mut self) -> Option<String> {
        let line = tokio::time::timeout(WAIT, self.lines.next_line())
            .await
            .expect("a log line in time")
            .unwrap()?;
        if let Some((what, rest)) = line.split_once(" listening")
            && let Some(addr) = rest.split(" addr=").nth(1)
        {
            let what = what.rsplit(' ').next().unwrap_or_default().to_owned();
            let addr = addr
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
            self.listening.push((what, addr));
        }
        self.log.push_str(&line);
        self.log.push('\n');
        Some(line)
    }

    /// The address `what` (websocket, grpc, admin) listens on, from the log.
    pub async fn addr(&mut self, what: &str) -> String {
        loop {
            if let Some((_, a)) = self.listening.iter().find(|(w, _)| w == what) {
                return a.clone();
            }
            if self.line().await.is_none() {
                panic!("the process ended before {what} listened:\n{}", self.log);
            }
        }
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        let pid = self.child.id().unwrap().to_string();
        assert!(
            std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
    }

    /// Reads the log to its end (after the process stopped logging).
    pub async fn read_to_end(&mut self) {
        while self.line().await.is_some() {}
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

impl Binary {
    /// Sends `signal` (`STOP`, `CONT`, ...).
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().unwrap().to_string();
        assert!(
            std::process::Command::new("kill")
                .args([format!("-{signal}"), pid])
                .status()
                .unwrap()
                .success()
        );
    }

    /// Sends SIGKILL: the process dies without a word to anyone.
    pub fn kill9(&self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}
