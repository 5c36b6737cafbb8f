//! How much of the CPUs this process gets. llama.cpp's CPU threads wait
//! for one another at every operation of a graph by spinning, so when
//! other processes hold the CPUs a decode slows by far more than the share
//! it lost: two daemons of two threads each draining 16 jobs on two cores
//! took 111 s where one daemon drained 32 in 2.0 s, and the same two
//! daemons with one thread each took 1.9 s. The start-up measurements
//! check the share before they trust a timing; the batched engine watches
//! it while it decodes and says when it falls.

use std::time::{Duration, Instant};

/// The share of the CPU time its threads would use below which
/// start-up measurements are not trusted
/// ([`crate::probe::ProbeError::Busy`], [`cpu_share`]) and [`CpuWatch`]
/// warns.
/// llama.cpp's CPU threads wait for one another at every operation of a
/// graph by spinning, so a step slows by far more than the share it lost:
/// with three daemons starting at once on two cores, flash attention
/// measured 6 to 16 tok/s where it runs 326 alone, each measurement took
/// 6 to 44 s instead of 0.2, and one daemon chose the slower setting. Alone
/// on this machine a measurement gets 96 to 99%; two daemons starting at
/// once get 50% each.
pub const MIN_CPU_SHARE: f64 = 0.75;

/// The threads that can run at once: `threads`, at most one per CPU.
pub fn runnable(threads: u32) -> u32 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    threads.clamp(1, cpus.max(1))
}

/// The CPU share of a span of time: what this process used since
/// [`CpuSpan::start`], over what `threads` threads (at most one per CPU)
/// would use alone.
pub(crate) struct CpuSpan {
    cpu0: f64,
    t0: Instant,
    threads: u32,
}

impl CpuSpan {
    pub(crate) fn start(threads: u32) -> CpuSpan {
        CpuSpan {
            cpu0: process_cpu_secs(),
            t0: Instant::now(),
            threads: runnable(threads),
        }
    }

    /// The threads the share is counted against.
    pub(crate) fn threads(&self) -> u32 {
        self.threads
    }

    /// The share so far (NaN when getrusage failed).
    pub(crate) fn share(&self) -> f64 {
        (process_cpu_secs() - self.cpu0) / (self.t0.elapsed().as_secs_f64() * f64::from(self.threads))
    }
}

/// The share of `threads` CPUs (at most as many as the machine has) that
/// this process gets: `threads` threads spin for `window`, and the CPU
/// time they used is divided by what they would use alone. About 1.0 on
/// an idle machine; below [`MIN_CPU_SHARE`], other processes hold the
/// CPUs and decode steps timed now would measure them as much as the
/// model. Costs `window` of wall time.
pub fn cpu_share(threads: u32, window: Duration) -> f64 {
    let span = CpuSpan::start(threads);
    let spin = || {
        while span.t0.elapsed() < window {
            std::hint::spin_loop();
        }
    };
    std::thread::scope(|s| {
        for _ in 1..span.threads {
            s.spawn(spin);
        }
        spin();
    });
    span.share()
}

/// CPU seconds this process has used, all its threads together.
pub(crate) fn process_cpu_secs() -> f64 {
    // SAFETY: getrusage writes only into the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return f64::NAN;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

/// Seconds of decoding that [`CpuWatch`] judges together.
const WATCH_WINDOW_SECS: f64 = 2.0;
/// How often [`CpuWatch`] repeats its warning while the share stays low.
const WARN_EVERY: Duration = Duration::from_secs(600);

/// Watches the CPU time decode calls get, over windows of
/// [`WATCH_WINDOW_SECS`] of decoding: when a window gets less than
/// [`MIN_CPU_SHARE`] of what the engine's threads would use, it warns (at
/// most every ten minutes while it lasts) with the `--threads` that would
/// fit what the process gets, and says when the CPUs are back.
pub(crate) struct CpuWatch {
    threads: u32,
    /// The configured count, for the message.
    configured: u32,
    wall: f64,
    cpu: f64,
    warned: Option<Instant>,
}

impl CpuWatch {
    pub(crate) fn new(threads: u32) -> CpuWatch {
        CpuWatch {
            threads: runnable(threads),
            configured: threads,
            wall: 0.0,
            cpu: 0.0,
            warned: None,
        }
    }

    /// Records a decode call that began at `cpu0` ([`process_cpu_secs`])
    /// and took `wall` seconds; at the end of a window, judges it.
    pub(crate) fn record(&mut self, cpu0: f64, wall: f64) {
        let cpu = process_cpu_secs() - cpu0;
        if !cpu.is_finite() {
            return;
        }
        self.cpu += cpu;
        self.wall += wall;
        if self.wall < WATCH_WINDOW_SECS {
            return;
        }
        let share = self.cpu / (self.wall * f64::from(self.threads));
        let secs = self.wall;
        (self.cpu, self.wall) = (0.0, 0.0);
        tracing::debug!(
            "decoding got {:.0}% of {} threads' CPU time over {secs:.1} s",
            share * 100.0,
            self.threads
        );
        if share < MIN_CPU_SHARE {
            if self.warned.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                let fit = ((f64::from(self.threads) * share).floor() as u32).max(1);
                tracing::warn!(
                    "decoding got {:.0}% of the CPU time of its {} threads over the last {secs:.1} s: other processes \
                     hold these CPUs, and llama.cpp's threads spin while they wait for one another, so decoding runs \
                     many times slower than that share (two daemons of 2 threads on 2 cores drained their jobs 57x \
                     slower than with 1 thread each). Give the processes on these CPUs threads that fit together \
                     (here --threads {fit}, or fewer daemons per host)",
                    share * 100.0,
                    self.configured
                );
                self.warned = Some(Instant::now());
            }
        } else if self.warned.take().is_some() {
            tracing::info!(
                "decoding gets its CPUs again ({:.0}% of {} threads' CPU time)",
                share * 100.0,
                self.threads
            );
        }
    }
}
