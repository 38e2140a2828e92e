//! A server that was paused (SIGSTOP, a frozen VM) for longer than the group's session
//! timeout may have lost its partitions to another server while it could not tell: the group
//! went on without it. Everything it processed since its last checkpoint is then being read
//! again by the partitions' new owners, so it must not archive it, nor commit offsets over
//! theirs. It stops instead (exit status 75), and a restart resumes from its last checkpoint
//! like after a crash, rejoining the group as a new member.
//!
//! A watchdog thread ticks every 100 ms; a tick that comes more than the session timeout after
//! the previous one means the whole process was not running (a busy thread delays no other
//! thread's sleep that long). The archive and the offset committer ask [`PauseFence::wait_alive`]
//! before each commit: the commit waits until the watchdog has ticked after the pause, and the
//! watchdog stops the process first when the pause was too long, so no commit slips through
//! between the process resuming and the watchdog noticing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often the watchdog ticks.
const TICK: Duration = Duration::from_millis(100);
/// A tick older than this makes a commit wait for the next one.
const FRESH: Duration = Duration::from_millis(500);
/// The exit status of a server stopped by the fence (EX_TEMPFAIL: start it again).
pub(crate) const EXIT_PAUSED: i32 = 75;

/// Shared by the watchdog and the committers.
pub(crate) struct PauseFence {
    origin: Instant,
    /// Milliseconds since `origin` of the watchdog's latest tick.
    last_tick: AtomicU64,
    /// The server is stopping: the watchdog ended, the last commits go as before.
    stopped: AtomicBool,
}

impl PauseFence {
    fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// Starts the watchdog (until `stop`); a pause longer than `session_timeout` stops the
    /// process.
    pub(crate) fn spawn(
        session_timeout: Duration,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<Arc<Self>> {
        let fence = Arc::new(Self {
            origin: Instant::now(),
            last_tick: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
        });
        let f = fence.clone();
        std::thread::Builder::new()
            .name("pitwall-pause-watch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    let now = f.now_ms();
                    let gap = Duration::from_millis(now - f.last_tick.load(Ordering::Relaxed));
                    if gap > session_timeout {
                        stop_paused(gap, session_timeout);
                    }
                    f.last_tick.store(now, Ordering::Relaxed);
                }
                f.stopped.store(true, Ordering::Relaxed);
            })?;
        Ok(fence)
    }

    /// Returns once the watchdog has ticked recently (it stops the process instead when the
    /// process was paused past the session timeout). Called before every commit.
    pub(crate) fn wait_alive(&self) {
        while self.now_ms() - self.last_tick.load(Ordering::Relaxed) > FRESH.as_millis() as u64
            && !self.stopped.load(Ordering::Relaxed)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn stop_paused(gap: Duration, session_timeout: Duration) -> ! {
    let msg = format!(
        "this server was paused for {:.1} s, longer than the consumer group's session timeout ({} s): its partitions may have another owner by now, so it commits nothing more and stops; start it again to resume from its last checkpoint",
        gap.as_secs_f64(),
        session_timeout.as_secs()
    );
    tracing::error!("{msg}");
    std::process::exit(EXIT_PAUSED)
}
