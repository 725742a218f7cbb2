//! CPU time this process has used, from `getrusage`: the worker's sizing compares it with wall
//! time, and the benchmarks report it.

use std::time::Duration;

/// User + system CPU time of this process so far.
pub fn own_cpu_time() -> Duration {
    rusage_cpu(libc::RUSAGE_SELF)
}

/// User + system CPU time of this process and of the children it has waited for (the PDF
/// extraction children).
pub fn cpu_time_with_children() -> Duration {
    rusage_cpu(libc::RUSAGE_SELF) + rusage_cpu(libc::RUSAGE_CHILDREN)
}

fn rusage_cpu(who: libc::c_int) -> Duration {
    // SAFETY: a zeroed rusage is a valid value of a plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    unsafe { libc::getrusage(who, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}
