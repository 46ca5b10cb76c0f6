//! A child process whose stderr lines are kept (and echoed when RESPMESH_TEST_LOG is set), for
//! tests that wait for a log line and show the log when something fails.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Logged {
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    rx: Mutex<Receiver<String>>,
}

impl Logged {
    /// Spawns `cmd` with stderr captured; `label` prefixes echoed lines.
    pub fn spawn(mut cmd: Command, label: &str) -> std::io::Result<Logged> {
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
        let stderr = child.stderr.take().expect("piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = channel();
        let (kept, label) = (lines.clone(), label.to_owned());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("RESPMESH_TEST_LOG").is_some() {
                    eprintln!("[{label}] {line}");
                }
                let _ = tx.send(line.clone());
                kept.lock().expect("log lock").push(line);
            }
        });
        Ok(Logged { child, lines, rx: Mutex::new(rx) })
    }

    /// The first line (so far, or within `timeout`) containing `fragment`; panics with the
    /// log after `timeout`.
    pub fn wait_for(&self, fragment: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let rx = self.rx.lock().expect("log lock");
        loop {
            if let Some(line) = self.lines.lock().expect("log lock").iter().find(|l| l.contains(fragment)) {
                return line.clone();
            }
            if rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).is_err() {
                // One last look: the line may have been kept just now.
                if let Some(line) = self.lines.lock().expect("log lock").iter().find(|l| l.contains(fragment)) {
                    return line.clone();
                }
                panic!("no log line with {fragment:?} within {timeout:?}; log:\n{}", self.log());
            }
        }
    }

    pub fn log(&self) -> String {
        self.lines.lock().expect("log lock").join("\n")
    }
}

/// The `address=` field of a log line.
pub fn address_in(line: &str) -> Option<std::net::SocketAddr> {
    line.split_whitespace().find_map(|t| t.strip_prefix("address=")).and_then(|a| a.parse().ok())
}

impl Drop for Logged {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
