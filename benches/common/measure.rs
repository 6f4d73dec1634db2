//! Measuring a child process from a benchmark: wall time and peak RSS from `wait4`, so a
//! figure is the command's own, not the benchmark process's.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Wall time and peak RSS (MB) of a child process (and its waited-for children).
pub fn measure(mut cmd: Command) -> (Duration, f64) {
    let t = Instant::now();
    let child = cmd.stdout(Stdio::null()).spawn().unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; `status` and `usage` are valid for writes.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let elapsed = t.elapsed();
    assert_eq!(r, pid, "wait4");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child failed: {cmd:?}"
    );
    (elapsed, usage.ru_maxrss as f64 / 1024.0)
}
