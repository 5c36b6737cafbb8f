//! The machine a run measured: core count (`nproc`), CPU model, memory,
//! kernel, load average, and the commit of the tree under test.

use std::process::Command;

use serde_json::{json, Value};

fn cmd_output(prog: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(prog).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn cpuinfo_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
}

fn mem_total_gib() -> Option<f64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: f64 = info
        .lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / (1024.0 * 1024.0))
}

/// `/proc/loadavg`'s three averages.
pub fn loadavg() -> Option<String> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

/// The machine description recorded with the results.
pub fn describe() -> Value {
    let nproc = cmd_output("nproc", &[])
        .and_then(|s| s.parse::<u64>().ok())
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get() as u64));
    json!({
        "nproc": nproc,
        "cpu_model": cpuinfo_model(),
        "mem_total_gib": mem_total_gib().map(|g| (g * 10.0).round() / 10.0),
        "kernel": cmd_output("uname", &["-sr"]),
        "git_commit": cmd_output("git", &["rev-parse", "--short", "HEAD"]),
        "git_dirty": cmd_output("git", &["status", "--porcelain", "--untracked-files=no"]).is_some(),
    })
}
