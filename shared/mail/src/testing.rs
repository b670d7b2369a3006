//! A real SMTP server for tests: aiosmtpd (from PyPI) storing every message
//! it receives in a maildir. Used by this crate's tests and by the services'
//! (`features = ["testing"]`); nothing in production calls it.
//!
//! When aiosmtpd is not installed, [`Aiosmtpd::start`] says so and returns
//! `None`, except under `CI=true`, where it panics: CI must run the delivery
//! tests.

use std::{
    fs,
    io::{BufRead, BufReader},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

/// Runs aiosmtpd's `Controller` with the `Mailbox` handler (the same server
/// `python3 -m aiosmtpd -c aiosmtpd.handlers.Mailbox` runs); `start()`
/// returns only once the server answers, then the driver says so and waits
/// to be killed.
const SERVER: &str = "\
import signal, sys
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox
Controller(Mailbox(sys.argv[1]), hostname='127.0.0.1', port=int(sys.argv[2])).start()
print('ready', flush=True)
signal.pause()
";

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}

/// aiosmtpd on 127.0.0.1, killed on drop.
pub struct Aiosmtpd {
    child: Child,
    port: u16,
    maildir: PathBuf,
    _dir: tempfile::TempDir,
}

impl Aiosmtpd {
    /// Starts one and returns once it accepts mail; `None` (after saying why)
    /// when aiosmtpd is not installed, outside CI.
    pub fn start() -> Option<Self> {
        let importable = Command::new("python3")
            .args(["-c", "import aiosmtpd"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !importable {
            assert!(
                !in_ci(),
                "CI=true and aiosmtpd is not importable: python3 -m pip install aiosmtpd"
            );
            eprintln!(
                "SKIPPED: aiosmtpd is not importable (python3 -m pip install aiosmtpd); \
                 an SMTP delivery test did not run"
            );
            return None;
        }
        let dir = tempfile::tempdir().expect("temporary folder");
        let maildir = dir.path().join("maildir");
        let log = dir.path().join("aiosmtpd.log");
        let log_file = fs::File::create(&log).expect("log file");
        let port = free_port();
        let mut child = Command::new("python3")
            .args(["-c", SERVER])
            .arg(&maildir)
            .arg(port.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("starting python3 with aiosmtpd");
        // The driver prints one line once the server accepts connections
        // (the Controller's own readiness check), or exits with the reason
        // in the log.
        let mut ready = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        let _ = BufReader::new(stdout).read_line(&mut ready);
        if ready.trim_end() != "ready" {
            let _ = child.kill();
            let status = child.wait().expect("aiosmtpd status");
            panic!(
                "aiosmtpd did not start ({status}):\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        Some(Self {
            child,
            port,
            maildir,
            _dir: dir,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `smtp://127.0.0.1:PORT`, for `--smtp-url`.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Where messages land: `new/` holds one file per message.
    pub fn maildir(&self) -> &Path {
        &self.maildir
    }

    /// The messages delivered so far, oldest first.
    pub fn delivered(&self) -> Vec<Vec<u8>> {
        let Ok(entries) = fs::read_dir(self.maildir.join("new")) else {
            return Vec::new();
        };
        let mut paths: Vec<_> = entries.map(|e| e.expect("maildir entry").path()).collect();
        paths.sort();
        paths
            .iter()
            .map(|p| fs::read(p).expect("maildir file"))
            .collect()
    }

    /// Stops the server (a reply then finds nobody listening).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Aiosmtpd {
    fn drop(&mut self) {
        self.stop();
    }
}
