//! The processes `pitwall bench` (and the end-to-end tests) start and watch: a free loopback
//! port to give them, their CPU time and memory read through `procfs`, and a clean stop
//! (SIGTERM, then SIGKILL if it does not exit in time).

use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::Result;

/// A TCP port free on 127.0.0.1 at the time of the call.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// What a process has used so far.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// CPU seconds, user and system.
    pub cpu_secs: f64,
    /// Peak resident set size, bytes.
    pub peak_rss: u64,
    /// Resident set size now, bytes.
    pub rss: u64,
}

/// CPU time and memory of process `pid` (Linux `/proc`).
pub fn usage(pid: u32) -> Result<Usage> {
    let process = procfs::process::Process::new(pid as i32)?;
    let stat = process.stat()?;
    let status = process.status()?;
    let ticks = (stat.utime + stat.stime) as f64;
    Ok(Usage {
        cpu_secs: ticks / procfs::ticks_per_second() as f64,
        peak_rss: status.vmhwm.unwrap_or(0) * 1024,
        rss: status.vmrss.unwrap_or(0) * 1024,
    })
}

/// Asks `child` to stop with SIGTERM and waits up to `within` for it to exit; kills it
/// (SIGKILL) if it has not. Returns whether it stopped by itself.
pub fn terminate(child: &mut Child, within: Duration) -> bool {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}
