//! `nrvnad status WS` and `nrvnad stop WS`. Stop signals only a process that
//! holds the workspace lock and is an nrvnad, checked before each signal.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nrvna_core::lifecycle::{daemon_status, is_nrvnad, lock_held, read_info, read_pid, unlocked_owner, DaemonStatus};
use std::collections::HashMap;

use nrvna_core::members::{
    list_members, member_ids, read_member, remove_stop_request, request_stop, MemberRecord, MemberState,
};
use nrvna_core::workspace::{LOCK_FILE, PID_FILE};
use nrvna_core::Workspace;
use rustix::process::{kill_process, Pid, Signal};

/// `nrvnad status WS [--json] [--local]`: 0 ready, 2 starting, 1 not running.
pub fn status(ws_path: &Path, json: bool, local: bool) -> Result<ExitCode> {
    let Ok(ws) = Workspace::open(ws_path) else {
        if json {
            println!("{}", serde_json::json!({ "status": "not_running" }));
        } else {
            println!("not running (no workspace at {})", ws_path.display());
        }
        return Ok(ExitCode::from(1));
    };
    let st = daemon_status(&ws);
    let members: Vec<MemberRecord> = list_members(&ws)
        .into_iter()
        .filter(|m| !local || m.is_this_host())
        .collect();
    if st == DaemonStatus::NotRunning && (local || !members.is_empty()) {
        return shared_status(&members, json);
    }
    let (word, code, pid) = match st {
        DaemonStatus::Ready { pid } => ("ready", 0, pid),
        DaemonStatus::Starting { pid } => ("starting", 2, pid),
        DaemonStatus::NotRunning => ("not_running", 1, None),
    };
    if json {
        let mut v = serde_json::json!({ "status": word, "pid": pid });
        if code != 1 {
            if let Some(serde_json::Value::Object(info)) = read_info(&ws) {
                for (k, val) in info {
                    v.as_object_mut().expect("object").entry(k).or_insert(val);
                }
            }
        }
        println!("{v}");
    } else {
        match (code, read_info(&ws)) {
            (0, Some(i)) => {
                // The C++ daemon's info has no engine.
                let engine = i["engine"]
                    .as_str()
                    .map(|e| format!(", {e} engine"))
                    .unwrap_or_default();
                println!(
                    "ready (pid {}, model {}, {} workers{engine}, since {})",
                    pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into()),
                    i["model"].as_str().unwrap_or("?"),
                    i["workers"],
                    i["started_at"].as_str().unwrap_or("?")
                );
                // A daemon serving several models: each one's state.
                let lines = nrvna_core::members::model_lines(&i["models"]);
                if lines.len() > 1 {
                    for l in lines {
                        println!("  model {l}");
                    }
                }
            }
            (1, _) => println!("not running"),
            _ => println!(
                "{word} (pid {})",
                pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into())
            ),
        }
    }
    Ok(ExitCode::from(code))
}

/// The status of a shared workspace's members.
fn shared_status(members: &[MemberRecord], json: bool) -> Result<ExitCode> {
    let fresh = |m: &&MemberRecord| m.heartbeat_age_s().is_some_and(|a| a < m.lease_ttl_s);
    let (word, code) = if members.iter().filter(fresh).any(|m| m.state() == MemberState::Ready) {
        ("ready", 0)
    } else if members.iter().any(|m| fresh(&m)) {
        ("starting", 2)
    } else {
        ("not_running", 1)
    };
    if json {
        let list: Vec<serde_json::Value> = members
            .iter()
            .map(|m| {
                let mut v = serde_json::to_value(m).unwrap_or_default();
                v["heartbeat_age_s"] = serde_json::json!(m.heartbeat_age_s().map(|a| (a * 10.0).round() / 10.0));
                v
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({ "status": word, "mode": "shared", "members": list })
        );
        return Ok(ExitCode::from(code));
    }
    println!("{word} (shared: {} members)", members.len());
    for m in members {
        println!("{}", m.summary());
    }
    Ok(ExitCode::from(code))
}

/// Sends SIGTERM to `pid` (a positive process id; never a process group).
fn terminate(pid: u32) -> std::io::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a process id"))?;
    Ok(kill_process(pid, Signal::TERM)?)
}

/// The inode of the lock file, to match against /proc/locks.
fn lock_inode(ws: &Workspace) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(ws.file(LOCK_FILE)).ok().map(|m| m.ino())
}

/// Whether `pid` is an nrvnad that holds the FLOCK on the workspace's lock file.
pub fn is_lock_holder(ws: &Workspace, pid: u32) -> bool {
    if !is_nrvnad(pid) {
        return false;
    }
    let Some(ino) = lock_inode(ws) else {
        return false;
    };
    let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    locks.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"
        f.len() >= 6
            && f[1] == "FLOCK"
            && f[4] == pid.to_string()
            && f[5].rsplit(':').next().and_then(|i| i.parse::<u64>().ok()) == Some(ino)
    })
}

/// `nrvnad stop WS [--timeout S] [--all]`: 0 when stopped or already absent.
pub fn stop(ws_path: &Path, timeout: f64, all: bool) -> Result<ExitCode> {
    let Ok(ws) = Workspace::open(ws_path) else {
        eprintln!("nrvnad: no daemon: {} is not a workspace", ws_path.display());
        return Ok(ExitCode::SUCCESS);
    };
    if !lock_held(&ws) && unlocked_owner(&ws).is_none() && !member_ids(&ws).is_empty() {
        return stop_members(&ws, timeout, all);
    }
    if !lock_held(&ws) {
        // An older C++ daemon takes no lock: its pid file is all there is.
        if let Some(pid) = unlocked_owner(&ws) {
            return stop_unlocked(pid, timeout);
        }
        eprintln!("nrvnad: not running on {}", ws.root().display());
        return Ok(ExitCode::SUCCESS);
    }
    let pid = read_pid(&ws).with_context(|| {
        format!("the workspace is locked but {PID_FILE} is unreadable; find the process with: fuser WS/{LOCK_FILE}")
    })?;
    let deadline = Instant::now() + Duration::from_secs_f64(timeout.max(0.0));
    let mut signalled = false;
    loop {
        // Stopped once the daemon we signalled lets go of the lock: a
        // waiting `--drain` daemon may take it over at once.
        if !lock_held(&ws) || (signalled && !is_lock_holder(&ws, pid)) {
            eprintln!("nrvnad: stopped (pid {pid})");
            return Ok(ExitCode::SUCCESS);
        }
        if !signalled {
            if !is_lock_holder(&ws, pid) {
                anyhow::bail!(
                    "pid {pid} in {PID_FILE} is not the nrvnad holding {}; refusing to signal it (the pid file is stale)",
                    ws.file(LOCK_FILE).display()
                );
            }
            terminate(pid).map_err(|e| anyhow::anyhow!("signalling pid {pid}: {e}"))?;
            signalled = true;
        }
        if Instant::now() >= deadline {
            eprintln!("nrvnad: pid {pid} is still running after {timeout} s; wait longer, or kill -9 {pid}");
            return Ok(ExitCode::from(1));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops this host's members of a shared workspace (all members with
/// `all`): a stop request file for each (read at its next heartbeat,
/// wherever it runs), and SIGTERM where the pid is one this process can
/// see. Waits until their records are gone.
fn stop_members(ws: &Workspace, timeout: f64, all: bool) -> Result<ExitCode> {
    let targets: Vec<MemberRecord> = list_members(ws)
        .into_iter()
        .filter(|m| all || m.is_this_host())
        .collect();
    if targets.is_empty() {
        eprintln!(
            "nrvnad: no member of {} runs on this host; stop members on other hosts with: nrvnad stop {} --all",
            ws.root().display(),
            ws.root().display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    for m in &targets {
        request_stop(ws, &m.member).with_context(|| format!("asking member {} to stop", m.member))?;
        if m.pid_is_ours_to_see() && is_nrvnad(m.pid) {
            let _ = terminate(m.pid);
        }
    }
    let deadline = Instant::now() + Duration::from_secs_f64(timeout.max(0.0));
    // A member that died leaves a record whose heartbeat never moves again:
    // judged, like the members do, by watching it on this clock.
    let mut seen: HashMap<String, (u64, Instant)> = targets
        .iter()
        .map(|m| (m.member.clone(), (m.beat, Instant::now())))
        .collect();
    loop {
        let mut left = Vec::new();
        let mut silent = 0;
        for m in &targets {
            let Ok(now) = read_member(ws, &m.member) else {
                if !member_ids(ws).contains(&m.member) {
                    // Gone: the member removed its record (and its stop request).
                    let _ = remove_stop_request(ws, &m.member);
                    continue;
                }
                left.push(m);
                continue;
            };
            let s = seen.get_mut(&m.member).expect("every target is watched");
            if now.beat != s.0 {
                *s = (now.beat, Instant::now());
            } else if s.1.elapsed().as_secs_f64() >= 2.0 * now.lease_ttl_s {
                silent += 1;
            }
            left.push(m);
        }
        if left.is_empty() {
            for m in &targets {
                eprintln!("nrvnad: stopped member {} on {}", m.member, m.host);
            }
            return Ok(ExitCode::SUCCESS);
        }
        if silent == left.len() {
            eprintln!(
                "nrvnad: {silent} members have not beaten for two leases (they died); the other members take their jobs back, and their stop requests stay in case they come back"
            );
            return Ok(ExitCode::SUCCESS);
        }
        if Instant::now() >= deadline {
            let names: Vec<&str> = left.iter().map(|m| m.member.as_str()).collect();
            eprintln!(
                "nrvnad: members still running after {timeout} s: {}; wait longer, or kill them on their hosts",
                names.join(", ")
            );
            return Ok(ExitCode::from(1));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops a daemon that holds no lock (an older C++ nrvnad named by
/// `.nrvnad.pid`): SIGTERM while it is still a live nrvnad, then wait.
fn stop_unlocked(pid: u32, timeout: f64) -> Result<ExitCode> {
    terminate(pid).map_err(|e| anyhow::anyhow!("signalling pid {pid}: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs_f64(timeout.max(0.0));
    while is_nrvnad(pid) {
        if Instant::now() >= deadline {
            eprintln!("nrvnad: pid {pid} is still running after {timeout} s; wait longer, or kill -9 {pid}");
            return Ok(ExitCode::from(1));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("nrvnad: stopped (pid {pid})");
    Ok(ExitCode::SUCCESS)
}
