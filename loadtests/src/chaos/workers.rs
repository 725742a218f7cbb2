//! The chaos run's `sluice-worker` processes: started with the rig's environment (and nothing
//! else from `SLUICE_*`), logging to a file per slot, killed, frozen and thawed by signal.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::Rng;
use rand::rngs::StdRng;

use crate::fleet::free_port;

/// The worker processes, by slot; a slot's process is replaced when it is killed.
pub(super) struct Workers {
    pub(super) bin: PathBuf,
    pub(super) env: HashMap<String, String>,
    pub(super) log_dir: PathBuf,
    pub(super) slots: Vec<Option<Child>>,
    pub(super) frozen: Vec<bool>,
}

impl Workers {
    pub(super) fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_dir.join(format!("worker-{i}.log")))?;
        let mut cmd = Command::new(&self.bin);
        for (key, _) in std::env::vars() {
            if key.starts_with("SLUICE_") {
                cmd.env_remove(key);
            }
        }
        let child = cmd
            .envs(&self.env)
            .env("SLUICE_HTTP_LISTEN", format!("127.0.0.1:{}", free_port()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.slots[i] = Some(child);
        self.frozen[i] = false;
        Ok(())
    }

    pub(super) fn signal(&self, i: usize, signal: i32) {
        if let Some(child) = &self.slots[i] {
            // SAFETY: a signal to our own child process.
            unsafe { libc::kill(child.id() as i32, signal) };
        }
    }

    pub(super) fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.slots[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.frozen[i] = false;
    }

    /// Slots whose process exited by itself since the last call (their slots are emptied), each
    /// with its exit status and the last line it logged (a worker that gives up says why there).
    pub(super) fn reap(&mut self) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if let Some(child) = slot
                && let Ok(Some(status)) = child.try_wait()
            {
                let last_words = last_line(&self.log_dir.join(format!("worker-{i}.log")));
                out.push((i, format!("{status}: {last_words}")));
                *slot = None;
            }
        }
        out
    }

    /// A random slot with a running, unfrozen worker.
    pub(super) fn pick(&self, rng: &mut StdRng) -> Option<usize> {
        let running: Vec<usize> = (0..self.slots.len())
            .filter(|i| self.slots[*i].is_some() && !self.frozen[*i])
            .collect();
        (!running.is_empty()).then(|| running[rng.random_range(0..running.len())])
    }

    /// The slot whose process owns the loopback TCP connection whose local end is `local`.
    pub(super) fn owner_of(&self, local: std::net::SocketAddr) -> Option<usize> {
        let needle = format!("socket:[{}]", socket_inode(local)?);
        self.slots.iter().position(|slot| {
            let Some(child) = slot else { return false };
            std::fs::read_dir(format!("/proc/{}/fd", child.id()))
                .map(|fds| {
                    fds.flatten().any(|fd| {
                        std::fs::read_link(fd.path())
                            .is_ok_and(|target| target.to_string_lossy() == needle)
                    })
                })
                .unwrap_or(false)
        })
    }

    /// SIGCONT, SIGTERM, then SIGKILL whatever is still running after `within`.
    pub(super) fn stop_all(&mut self, within: Duration) -> Vec<i32> {
        for i in 0..self.slots.len() {
            self.signal(i, libc::SIGCONT);
            self.signal(i, libc::SIGTERM);
        }
        let deadline = Instant::now() + within;
        let mut codes = Vec::new();
        for slot in &mut self.slots {
            let Some(mut child) = slot.take() else {
                continue;
            };
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    codes.push(status.code().unwrap_or(-1));
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    codes.push(-9);
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        codes
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for i in 0..self.slots.len() {
            self.kill(i);
        }
    }
}

/// The inode of the IPv4 loopback socket bound to `local`, from `/proc/net/tcp` (columns: `sl
/// local_address rem_address st queues tr retrnsmt uid timeout inode`, addresses as little-endian
/// hex `0100007F:PORT`).
fn socket_inode(local: std::net::SocketAddr) -> Option<u64> {
    let want = format!("0100007F:{:04X}", local.port());
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) == Some(&want.as_str()) {
            fields.get(9)?.parse().ok()
        } else {
            None
        }
    })
}

/// The last non-empty line of a worker's log, shortened to a line of the event list.
fn last_line(path: &std::path::Path) -> String {
    const MAX: usize = 400;
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let line = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("(no log)");
    match line.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_inode_of_our_own_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let inode = socket_inode(stream.local_addr().unwrap()).expect("listed in /proc/net/tcp");
        let needle = format!("socket:[{inode}]");
        let ours = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy() == needle));
        assert!(ours, "the inode belongs to this process");
    }
}
