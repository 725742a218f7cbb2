//! What the benchmarked processes cost: peak resident memory from `/proc/<pid>/status` (VmHWM,
//! the kernel's own high-water mark of the process itself) and CPU time and peak RSS including
//! reaped children (PDF extraction) from `wait4`'s resource usage.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Resources one finished process used.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// Exit code; -1 when killed by a signal.
    pub exit_code: i32,
    /// User + system CPU seconds of the process and every child it waited for.
    pub cpu_secs: f64,
    /// Largest peak RSS of the process or any child it waited for, KiB.
    pub max_rss_with_children_kib: u64,
}

/// `VmHWM` (peak RSS, KiB) from the text of `/proc/<pid>/status`.
pub fn parse_vm_hwm(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

/// The process's peak RSS so far, KiB; `None` once it has exited.
pub fn vm_hwm_kib(pid: u32) -> Option<u64> {
    parse_vm_hwm(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

fn timeval_secs(t: libc::timeval) -> f64 {
    t.tv_sec as f64 + t.tv_usec as f64 / 1e6
}

/// Reaps `pid` (a child of this process) once it exits, waiting at most `within`:
/// `Ok(None)` if it is still running then. The usage covers the process and the children it
/// reaped itself (the kernel adds those to its own on exit).
pub fn wait_usage(pid: u32, within: Duration) -> std::io::Result<Option<Usage>> {
    let deadline = Instant::now() + within;
    loop {
        let mut status = 0;
        // SAFETY: zeroed rusage is a valid value of a plain C struct.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: wait4 on our own child with valid out-pointers.
        let rc = unsafe { libc::wait4(pid as i32, &mut status, libc::WNOHANG, &mut usage) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if rc == pid as i32 {
            let exit_code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                -1
            };
            return Ok(Some(Usage {
                exit_code,
                cpu_secs: timeval_secs(usage.ru_utime) + timeval_secs(usage.ru_stime),
                max_rss_with_children_kib: usage.ru_maxrss.max(0) as u64,
            }));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// CPU time of a server's processes (PostgreSQL: one process per connection), summed over every
/// process seen so far, so backends that exit between two samples keep what they had spent by the
/// last one. Processes listed in `exclude` (the bench's own connection) are not counted.
pub struct ServerCpu {
    comm: String,
    exclude: Vec<u32>,
    /// Ticks of each process, keyed by pid and start time (pids are reused).
    seen: HashMap<(u32, u64), u64>,
}

impl ServerCpu {
    pub fn new(comm: &str, exclude: Vec<u32>) -> Self {
        ServerCpu {
            comm: comm.to_string(),
            exclude,
            seen: HashMap::new(),
        }
    }

    /// User + system CPU seconds spent so far by the server's processes.
    pub fn secs(&mut self) -> f64 {
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<u32>().ok())
                else {
                    continue;
                };
                if self.exclude.contains(&pid) {
                    continue;
                }
                let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                    continue;
                };
                if let Some((comm, start, ticks)) = parse_stat_cpu(&stat)
                    && comm == self.comm
                {
                    let slot = self.seen.entry((pid, start)).or_default();
                    *slot = (*slot).max(ticks);
                }
            }
        }
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        self.seen.values().sum::<u64>() as f64 / hz
    }
}

/// Command name, start time and user + system ticks from the text of `/proc/<pid>/stat`.
pub fn parse_stat_cpu(stat: &str) -> Option<(&str, u64, u64)> {
    // The name is parenthesised and may itself hold spaces or parentheses: split at the last ')'.
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1;
    // Fields after the name, numbered from 3 (state) as in proc(5): utime 14, stime 15, start 22.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some((comm, field(22)?, field(14)? + field(15)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_high_water_mark() {
        let status = "Name:\tsluice-worker\nVmPeak:\t  812344 kB\nVmHWM:\t   91236 kB\nVmRSS:\t   80000 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(91_236));
        assert_eq!(parse_vm_hwm("Name:\tzombie\n"), None);
    }

    #[test]
    // `wait_usage` reaps the child with wait4, which clippy cannot see.
    #[allow(clippy::zombie_processes)]
    fn measures_a_real_child() {
        let child = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done"])
            .spawn()
            .unwrap();
        let pid = child.id();
        assert!(vm_hwm_kib(pid).is_some_and(|kib| kib > 0));
        let usage = wait_usage(pid, Duration::from_secs(30)).unwrap().unwrap();
        assert_eq!(usage.exit_code, 0);
        assert!(usage.cpu_secs > 0.0, "{usage:?}");
        assert!(usage.max_rss_with_children_kib > 0);
    }

    #[test]
    fn reads_cpu_ticks_after_an_awkward_name() {
        let stat = "4242 (postgres: a) b) S 1 2 3 0 -1 4194560 10 0 0 0 170 30 0 0 20 0 1 0 98765 1000 200";
        assert_eq!(parse_stat_cpu(stat), Some(("postgres: a) b", 98765, 200)));
        assert_eq!(parse_stat_cpu("garbage"), None);
    }

    #[test]
    fn counts_cpu_of_processes_by_name() {
        let child = std::process::Command::new("sh")
            .args([
                "-c",
                "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; sleep 5",
            ])
            .spawn()
            .unwrap();
        let mut cpu = ServerCpu::new("sh", Vec::new());
        let mut excluded = ServerCpu::new("sh", vec![child.id()]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while cpu.secs() - excluded.secs() < 0.05 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut child = child;
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            cpu.secs() - excluded.secs() >= 0.05,
            "the busy shell was not counted"
        );
        // An exited process keeps what it had spent.
        assert!(cpu.secs() >= 0.05);
    }
}
