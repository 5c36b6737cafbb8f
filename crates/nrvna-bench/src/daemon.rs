//! One `nrvnad` run: spawned with its log in `OUT/logs/`, its model load
//! timed by polling `WS/.nrvnad.ready` every 2 ms, and reaped with
//! `wait4(2)` so that its peak RSS (`ru_maxrss`) comes with its exit status.

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use nrvna_core::workspace::READY_FILE;
use rustix::param::clock_ticks_per_second;
use rustix::process::{kill_process, Pid, Signal};
use serde_json::{json, Value};

use crate::tools::{command, quote, Bins, Env};

/// How a daemon ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Status {
    Code(i32),
    Signal(i32),
    /// wait4 failed: the status is unknown.
    Unknown,
}

/// A reaped daemon.
#[derive(Clone, Debug)]
pub struct Exit {
    pub status: Status,
    /// From spawn to exit.
    pub wall: Duration,
    /// Peak resident set size, KiB (`ru_maxrss`).
    pub maxrss_kib: i64,
    /// The benchmark killed it after its deadline.
    pub timed_out: bool,
    /// CPU seconds the daemon used (user + system).
    pub cpu_s: f64,
    /// CPU seconds the whole machine was busy while the daemon ran, minus
    /// the daemon's own: how much else competed for the cores.
    pub others_cpu_s: Option<f64>,
}

impl Exit {
    /// Average cores busy with other work during the run.
    pub fn others_cores(&self) -> Option<f64> {
        let w = self.wall.as_secs_f64();
        self.others_cpu_s.filter(|_| w > 0.0).map(|o| (o / w).max(0.0))
    }
}

/// What the reaper thread reports.
struct Reaped {
    status: Status,
    maxrss_kib: i64,
    cpu_s: f64,
    at: Instant,
    busy_s: Option<f64>,
}

/// What waiting for `.nrvnad.ready` found.
#[derive(Debug, PartialEq)]
pub enum Ready {
    Yes(Duration),
    /// The daemon exited first.
    Exited,
    TimedOut,
}

/// A spawned daemon (killed and reaped on drop if still running).
pub struct Daemon {
    pid: libc::pid_t,
    spawned: Instant,
    /// Wall-clock time of the spawn, to compare with meta.json timestamps.
    pub spawned_at: SystemTime,
    ready_file: PathBuf,
    ready_after: Option<Duration>,
    reaped: Receiver<Reaped>,
    /// The machine's busy CPU seconds at spawn.
    busy0: Option<f64>,
    exit: Option<Exit>,
    killed: bool,
    pub label: String,
    pub command: String,
    pub log: PathBuf,
}

impl Daemon {
    /// Spawns `nrvnad ARGS...` for workspace `ws` with `env`; its stdout and
    /// stderr go to `logs/LABEL.log`.
    pub fn spawn(bins: &Bins, label: &str, args: &[OsString], env: &Env, ws: &Path, logs: &Path) -> Result<Daemon> {
        let log = logs.join(format!("{label}.log"));
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        let mut shown: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        shown.push("nrvnad".into());
        shown.extend(args.iter().map(|a| quote(a)));
        let busy0 = busy_cpu_s();
        let spawned_at = SystemTime::now();
        let spawned = Instant::now();
        let child = command(&bins.nrvnad, env)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .context("spawning nrvnad")?;
        let pid = child.id() as libc::pid_t;
        // The Child handle is never waited on: wait4 below reaps the pid.
        drop(child);
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("reap-{pid}"))
            .spawn(move || {
                let (status, maxrss_kib, cpu_s) = reap(pid);
                let at = Instant::now();
                let _ = tx.send(Reaped {
                    status,
                    maxrss_kib,
                    cpu_s,
                    at,
                    busy_s: busy_cpu_s(),
                });
            })
            .context("starting the reaper thread")?;
        Ok(Daemon {
            pid,
            spawned,
            spawned_at,
            ready_file: ws.join(READY_FILE),
            ready_after: None,
            reaped: rx,
            busy0,
            exit: None,
            killed: false,
            label: label.to_owned(),
            command: shown.join(" "),
            log,
        })
    }

    fn record_exit(&mut self, r: Reaped) {
        let others = match (self.busy0, r.busy_s) {
            (Some(a), Some(b)) => Some((b - a - r.cpu_s).max(0.0)),
            _ => None,
        };
        self.exit = Some(Exit {
            status: r.status,
            wall: r.at.duration_since(self.spawned),
            maxrss_kib: r.maxrss_kib,
            timed_out: self.killed,
            cpu_s: r.cpu_s,
            others_cpu_s: others,
        });
    }

    /// Polls `.nrvnad.ready` every 2 ms until it appears, the daemon exits,
    /// or `timeout` passes.
    pub fn wait_ready(&mut self, timeout: Duration) -> Ready {
        loop {
            if self.ready_file.exists() {
                let t = self.spawned.elapsed();
                self.ready_after = Some(t);
                return Ready::Yes(t);
            }
            match self.reaped.try_recv() {
                Ok(r) => {
                    self.record_exit(r);
                    return Ready::Exited;
                }
                Err(TryRecvError::Disconnected) => return Ready::Exited,
                Err(TryRecvError::Empty) => {}
            }
            if self.spawned.elapsed() >= timeout {
                return Ready::TimedOut;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Whether the daemon is still running (reaps it if it has exited).
    pub fn running(&mut self) -> bool {
        if self.exit.is_some() {
            return false;
        }
        match self.reaped.try_recv() {
            Ok(r) => {
                self.record_exit(r);
                false
            }
            Err(TryRecvError::Empty) => true,
            Err(TryRecvError::Disconnected) => {
                self.lost();
                false
            }
        }
    }

    /// Waits up to `timeout` (from now) for the daemon to exit, then kills
    /// it (SIGKILL) and records it as timed out.
    pub fn wait_exit(&mut self, timeout: Duration) -> Exit {
        if let Some(e) = &self.exit {
            return e.clone();
        }
        match self.reaped.recv_timeout(timeout) {
            Ok(r) => self.record_exit(r),
            Err(RecvTimeoutError::Timeout) => {
                self.killed = true;
                sigkill(self.pid);
                match self.reaped.recv() {
                    Ok(r) => self.record_exit(r),
                    Err(_) => self.lost(),
                }
            }
            Err(RecvTimeoutError::Disconnected) => self.lost(),
        }
        self.exit.clone().expect("exit recorded")
    }

    fn lost(&mut self) {
        self.exit = Some(Exit {
            status: Status::Unknown,
            wall: self.spawned.elapsed(),
            maxrss_kib: 0,
            timed_out: self.killed,
            cpu_s: 0.0,
            others_cpu_s: None,
        });
    }

    /// CPU seconds the running daemon has used so far (/proc/PID/stat).
    pub fn cpu_now(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok()?;
        let rest = &stat[stat.rfind(')')? + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // Fields 14 and 15 (utime, stime) are 11 and 12 after the command.
        let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        let tck = clock_ticks_per_second();
        (tck > 0).then(|| ticks as f64 / tck as f64)
    }

    /// The exit, once reaped.
    pub fn exit(&self) -> Option<&Exit> {
        self.exit.as_ref()
    }

    pub fn load(&self) -> Option<Duration> {
        self.ready_after
    }

    /// Whether the daemon exited with status 0.
    pub fn ok(&self) -> bool {
        matches!(&self.exit, Some(e) if e.status == Status::Code(0) && !e.timed_out)
    }

    /// A one-line description of a bad exit, or `None` when it exited 0.
    pub fn problem(&self) -> Option<String> {
        let e = match &self.exit {
            None => return Some(format!("{}: still running", self.label)),
            Some(e) => e,
        };
        let how = match (&e.status, e.timed_out) {
            (_, true) => "was killed after its deadline".to_owned(),
            (Status::Code(0), false) => return None,
            (Status::Code(c), false) => format!("exited with status {c}"),
            (Status::Signal(s), false) => format!("was killed by signal {s}"),
            (Status::Unknown, false) => "could not be reaped (exit status unknown)".to_owned(),
        };
        Some(format!("{}: nrvnad {how} (log: {})", self.label, self.log.display()))
    }

    /// The run as JSON: command, exit, wall, load and peak RSS.
    pub fn record(&self) -> Value {
        let mut v = json!({
            "label": self.label,
            "command": self.command,
            "log": self.log.display().to_string(),
            "load_s": self.ready_after.map(|d| d.as_secs_f64()),
            "ok": self.ok(),
        });
        if let Some(e) = &self.exit {
            v["wall_s"] = json!(e.wall.as_secs_f64());
            v["peak_rss_kib"] = json!(e.maxrss_kib);
            v["peak_rss_mb"] = json!(kib_to_mb(e.maxrss_kib));
            v["timed_out"] = json!(e.timed_out);
            v["cpu_s"] = json!(e.cpu_s);
            v["others_cpu_s"] = json!(e.others_cpu_s);
            v["others_cores"] = json!(e.others_cores());
            match e.status {
                Status::Code(c) => v["exit_code"] = json!(c),
                Status::Signal(s) => v["signal"] = json!(s),
                Status::Unknown => v["exit_code"] = Value::Null,
            }
        }
        if let Some(p) = self.problem() {
            v["problem"] = json!(p);
        }
        v
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.exit.is_none() {
            sigkill(self.pid);
            let _ = self.reaped.recv_timeout(Duration::from_secs(10));
        }
    }
}

/// KiB to MB (10^6 bytes), the unit of the RSS target.
pub fn kib_to_mb(kib: i64) -> f64 {
    kib as f64 * 1024.0 / 1e6
}

/// Seconds the machine's CPUs have spent busy since boot (/proc/stat:
/// everything but idle and iowait, summed over all CPUs).
pub fn busy_cpu_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    if v.len() < 8 {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest is inside user)
    let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    let tck = clock_ticks_per_second();
    (tck > 0).then(|| busy as f64 / tck as f64)
}

/// SIGKILLs `pid`; an error (already reaped, say) is of no use to a caller
/// that only wants it gone.
fn sigkill(pid: libc::pid_t) {
    if let Some(pid) = Pid::from_raw(pid) {
        let _ = kill_process(pid, Signal::KILL);
    }
}

fn timeval_s(t: libc::timeval) -> f64 {
    t.tv_sec as f64 + t.tv_usec as f64 / 1e6
}

/// Blocks in wait4(2) until `pid` exits; returns its status, ru_maxrss and
/// CPU seconds.
fn reap(pid: libc::pid_t) -> (Status, i64, f64) {
    let mut status: libc::c_int = 0;
    // The one raw call left in this crate: std's Child::wait and rustix's
    // waitpid/waitid reap a child but drop its rusage, and neither has a
    // getrusage (whose RUSAGE_CHILDREN would, besides, merge every child
    // reaped so far rather than give this one's peak).
    //
    // SAFETY: `libc::rusage` is a C struct of integers and `timeval`s, for
    // which all-zero bytes are a valid value. wait4(2) only writes through
    // the two pointers, which point to a live, exclusively borrowed `c_int`
    // and `rusage` of the right types for the length of the call, and keeps
    // neither pointer past it.
    let ru = loop {
        let (r, ru) = unsafe {
            let mut ru: libc::rusage = std::mem::zeroed();
            let r = libc::wait4(pid, &mut status, 0, &mut ru);
            (r, ru)
        };
        if r == pid {
            break ru;
        }
        let e = std::io::Error::last_os_error();
        if r < 0 && e.raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        return (Status::Unknown, 0, 0.0);
    };
    let st = if libc::WIFEXITED(status) {
        Status::Code(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        Status::Signal(libc::WTERMSIG(status))
    } else {
        Status::Unknown
    };
    (st, ru.ru_maxrss, timeval_s(ru.ru_utime) + timeval_s(ru.ru_stime))
}
