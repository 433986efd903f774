//! The Python peer (`benches/peers/fastapi_server.py`) under uvicorn, on a free loopback port.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Peer {
    child: Child,
    pub base: String,
}

impl Peer {
    pub fn start(python: &Path, model_dir: &Path, workers: usize) -> Peer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let peers = crate::common::repo().join("benches/peers");
        // Absolute, not canonical: a venv's python is a symlink that must stay the venv's.
        let python = std::path::absolute(python).expect("python path");
        let child = Command::new(&python)
            .args(["-m", "uvicorn", "fastapi_server:app", "--host", "127.0.0.1"])
            .args([
                "--port",
                &port.to_string(),
                "--workers",
                &workers.to_string(),
            ])
            .args(["--log-level", "warning"])
            .current_dir(&peers)
            .env("FER_MODEL_DIR", model_dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("start the FastAPI peer (scripts/bench.sh installs it)");
        let peer = Peer {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let health = format!("{}/healthz", peer.base);
        while crate::common::get_status(&health) != Some(200) {
            assert!(Instant::now() < deadline, "the FastAPI peer did not start");
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!("FastAPI peer: {workers} uvicorn worker(s) on port {port}");
        peer
    }

    /// Resident memory of uvicorn and its workers, in MiB.
    pub fn rss_mib(&self) -> f64 {
        self.pids().into_iter().map(crate::common::rss_mib).sum()
    }

    /// uvicorn and its worker processes.
    pub fn pids(&self) -> Vec<u32> {
        let parent = self.child.id();
        let mut pids = vec![parent];
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<u32>().ok())
                else {
                    continue;
                };
                let ppid = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|s| {
                        s.rsplit_once(')')
                            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok())
                    });
                if ppid == Some(parent) {
                    pids.push(pid);
                }
            }
        }
        pids
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        // SIGTERM lets uvicorn stop its workers.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
