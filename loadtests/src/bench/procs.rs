//! What the benchmarked processes cost: peak resident memory from `/proc/<pid>/status` (VmHWM,
//! the kernel's own high-water mark of the process itself) and CPU time and peak RSS including
//! reaped children (PDF extraction) from `wait4`'s resource usage.

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
}
