//! The queue alone, with the echo engine (no model): 10,000 jobs published
//! in-process with `Submission::publish` from two threads. End to end
//! (submit + claim + finish on a running daemon), submit alone, and drain
//! alone, with default durability, with NRVNA_FSYNC=0, and with the
//! daemon's spare files off (NRVNA_SPARES=0).
//!
//! Each variant runs in this process: its publishers open the workspace
//! with the variant's settings (fsync on or off), and its daemon gets the
//! same through NRVNA_FSYNC and NRVNA_SPARES.
//!
//! No workspace is removed until every variant has run: on ext4 without a
//! journal, 40,000 files freed just before a variant make every file it
//! creates slower (the allocator skips recently freed inodes), and the
//! figures would measure the previous variant's cleanup. Each variant also
//! times plain file creation in its temp directory before it starts, so a
//! filesystem slowed by deletions elsewhere shows in the table.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nrvna_core::{Settings, State, Submission, Workspace};
use serde_json::{json, Value};

use super::{args, Ctx};
use crate::daemon::{kib_to_mb, Daemon, Ready};
use crate::report::{opt, table, Section, Target};
use crate::stats::ratio;
use crate::tools::{env, stop_daemon, Env, TempWs};

const PUBLISHERS: usize = 2;
const POLL: Duration = Duration::from_millis(20);
const DEADLINE: Duration = Duration::from_secs(600);

/// Counters shared with the publisher threads.
#[derive(Default)]
struct Published {
    ok: AtomicUsize,
    failed: AtomicUsize,
    threads_done: AtomicUsize,
}

/// Publishes `n` echo jobs from [`PUBLISHERS`] threads. Returns the
/// threads; each yields its finish time and its first error.
fn publish(
    ws: &Workspace,
    n: usize,
    counters: &Arc<Published>,
) -> Vec<std::thread::JoinHandle<(Instant, Option<String>)>> {
    (0..PUBLISHERS)
        .map(|t| {
            let ws = ws.clone();
            let c = counters.clone();
            std::thread::spawn(move || {
                let mut first_err = None;
                for i in (t..n).step_by(PUBLISHERS) {
                    match Submission::text(format!("queue job {i}")).publish(&ws) {
                        Ok(_) => c.ok.fetch_add(1, Ordering::SeqCst),
                        Err(e) => {
                            first_err.get_or_insert_with(|| e.to_string());
                            c.failed.fetch_add(1, Ordering::SeqCst)
                        }
                    };
                }
                c.threads_done.fetch_add(1, Ordering::SeqCst);
                (Instant::now(), first_err)
            })
        })
        .collect()
}

/// Jobs in a state directory. Every job is a directory, so where a
/// directory's link count counts its subdirectories (ext4, XFS) that count
/// is one stat; listing 10,000 entries every 20 ms took a fifth of this
/// process's CPU from the queue it measures. Elsewhere (btrfs: always 1),
/// the listing.
fn count(dir: &Path) -> usize {
    use std::os::unix::fs::MetadataExt;
    match std::fs::metadata(dir) {
        Ok(m) if m.nlink() >= 2 => (m.nlink() - 2) as usize,
        _ => std::fs::read_dir(dir).map(|r| r.count()).unwrap_or(0),
    }
}

fn join(
    handles: Vec<std::thread::JoinHandle<(Instant, Option<String>)>>,
    problems: &mut Vec<String>,
) -> Option<Instant> {
    let mut last = None;
    for h in handles {
        match h.join() {
            Ok((t, err)) => {
                last = last.max(Some(t));
                if let Some(e) = err {
                    problems.push(format!("publishing: {e}"));
                }
            }
            Err(_) => problems.push("a publisher thread panicked".into()),
        }
    }
    last
}

fn echo_argv(ws: &Path, drain: bool) -> Vec<std::ffi::OsString> {
    let mut a = args([
        "echo".as_ref(),
        ws.as_os_str(),
        "--engine".as_ref(),
        "echo".as_ref(),
        "--workers".as_ref(),
        "4".as_ref(),
    ]);
    if drain {
        a.push("--drain".into());
    }
    a
}

/// One variant's run: its settings, and what it gathers along the way.
struct Run<'a> {
    ctx: &'a Ctx,
    /// Jobs per measurement.
    n: usize,
    /// The daemon's environment.
    denv: Env,
    tag: &'static str,
    /// The publishers' workspace settings (fsync as the variant says).
    settings: Settings,
    problems: Vec<String>,
    /// Workspaces left for the parent to remove once every variant ran.
    kept: Vec<PathBuf>,
}

/// Submit + claim + finish on a running daemon: from the first publish
/// until all jobs are in output/ (polled every 20 ms).
fn end_to_end(r: &mut Run) -> Result<Value> {
    let (ctx, n, tag) = (r.ctx, r.n, r.tag);
    let (denv, problems, kept) = (&r.denv, &mut r.problems, &mut r.kept);
    let tmp = TempWs::new(&format!("queue-{tag}-e2e"))?;
    let ws = Workspace::create(tmp.path())?.with_settings(r.settings.clone());
    let label = format!("queue-{tag}-end-to-end");
    let mut d = Daemon::spawn(
        &ctx.bins,
        &label,
        &echo_argv(tmp.path(), false),
        denv,
        tmp.path(),
        &ctx.logs,
    )?;
    if !matches!(d.wait_ready(Duration::from_secs(60)), Ready::Yes(_)) {
        d.wait_exit(Duration::from_secs(10));
        bail!(
            "{label}: the daemon never became ready: {}",
            d.problem().unwrap_or_default()
        );
    }
    let counters = Arc::new(Published::default());
    let t0 = Instant::now();
    let handles = publish(&ws, n, &counters);
    let (done_dir, failed_dir) = (ws.dir(State::Done), ws.dir(State::Failed));
    let mut done;
    let mut failed;
    let t_end = loop {
        std::thread::sleep(POLL);
        done = count(&done_dir);
        failed = count(&failed_dir);
        let all_published = counters.threads_done.load(Ordering::SeqCst) == PUBLISHERS;
        if all_published && done + failed >= counters.ok.load(Ordering::SeqCst) {
            break Instant::now();
        }
        if !d.running() {
            problems.push(format!("{label}: the daemon exited with {done} of {n} jobs done"));
            break Instant::now();
        }
        if t0.elapsed() > DEADLINE {
            problems.push(format!("{label}: only {done} of {n} jobs done after {DEADLINE:?}"));
            break Instant::now();
        }
    };
    let submit_end = join(handles, problems);
    if let Err(e) = stop_daemon(&ctx.bins, tmp.path()) {
        problems.push(format!("{e:#}"));
    }
    d.wait_exit(Duration::from_secs(60));
    if let Some(p) = d.problem() {
        problems.push(p);
    }
    if failed > 0 {
        problems.push(format!("{label}: {failed} jobs failed"));
    }
    let secs = (t_end - t0).as_secs_f64();
    let submit_secs = submit_end.map(|t| (t - t0).as_secs_f64());
    kept.push(tmp.keep());
    Ok(json!({
        "daemon": d.record(),
        "published": counters.ok.load(Ordering::SeqCst),
        "publish_errors": counters.failed.load(Ordering::SeqCst),
        "done": done,
        "failed": failed,
        "seconds": secs,
        "jobs_per_s": ratio(Some(done as f64), Some(secs)),
        "submit_seconds_under_load": submit_secs,
        "submit_jobs_per_s_under_load": ratio(Some(n as f64), submit_secs),
        "peak_rss_mb": d.exit().map(|e| kib_to_mb(e.maxrss_kib)),
    }))
}

/// Submit alone into a fresh workspace, then drain it alone with `--drain`.
fn submit_then_drain(r: &mut Run) -> Result<(Value, Value)> {
    let (ctx, n, tag) = (r.ctx, r.n, r.tag);
    let (denv, problems, kept) = (&r.denv, &mut r.problems, &mut r.kept);
    let tmp = TempWs::new(&format!("queue-{tag}-drain"))?;
    let ws = Workspace::create(tmp.path())?.with_settings(r.settings.clone());
    let counters = Arc::new(Published::default());
    let t0 = Instant::now();
    let submit_end = join(publish(&ws, n, &counters), problems).unwrap_or_else(Instant::now);
    let submit_secs = (submit_end - t0).as_secs_f64();
    let published = counters.ok.load(Ordering::SeqCst);
    let submit = json!({
        "published": published,
        "publish_errors": counters.failed.load(Ordering::SeqCst),
        "seconds": submit_secs,
        "jobs_per_s": ratio(Some(published as f64), Some(submit_secs)),
    });

    let label = format!("queue-{tag}-drain");
    let mut d = Daemon::spawn(
        &ctx.bins,
        &label,
        &echo_argv(tmp.path(), true),
        denv,
        tmp.path(),
        &ctx.logs,
    )?;
    let t_spawn = Instant::now();
    d.wait_ready(DEADLINE);
    let (done_dir, failed_dir) = (ws.dir(State::Done), ws.dir(State::Failed));
    let mut done;
    let mut failed;
    let mut all_done = None;
    loop {
        done = count(&done_dir);
        failed = count(&failed_dir);
        if done + failed >= published {
            all_done = Some(t_spawn.elapsed().as_secs_f64());
            break;
        }
        if !d.running() || t_spawn.elapsed() > DEADLINE {
            break;
        }
        std::thread::sleep(POLL);
    }
    let exit = d.wait_exit(DEADLINE);
    if all_done.is_none() {
        done = count(&done_dir);
        failed = count(&failed_dir);
        problems.push(format!(
            "{label}: {done} of {published} jobs done when the daemon exited"
        ));
    }
    if let Some(p) = d.problem() {
        problems.push(p);
    }
    if failed > 0 {
        problems.push(format!("{label}: {failed} jobs failed"));
    }
    let wall = exit.wall.as_secs_f64();
    let load = d.load().map(|l| l.as_secs_f64());
    kept.push(tmp.keep());
    let drain = json!({
        "daemon": d.record(),
        "done": done,
        "failed": failed,
        "all_done_s": all_done,
        "wall_s": wall,
        "load_s": load,
        "jobs_per_s": ratio(Some(done as f64), all_done),
        "jobs_per_s_wall": ratio(Some(done as f64), Some(wall)),
        "peak_rss_mb": kib_to_mb(exit.maxrss_kib),
    });
    Ok((submit, drain))
}

/// Mean time to create an empty file in a fresh directory under the temp
/// dir, in µs (500 files, kept until the scenario ends): what the
/// filesystem charges per inode right now.
fn create_cost(kept: &mut Vec<PathBuf>) -> Result<f64> {
    const FILES: u32 = 500;
    let tmp = TempWs::new("queue-create-cost")?;
    let t0 = Instant::now();
    for i in 0..FILES {
        std::fs::File::create(tmp.path().join(i.to_string()))
            .with_context(|| format!("creating a file in {}", tmp.path().display()))?;
    }
    let us = t0.elapsed().as_secs_f64() * 1e6 / f64::from(FILES);
    kept.push(tmp.keep());
    Ok(us)
}

/// The queue scenario's variants: name, tag, fsync, spares.
const VARIANTS: [(&str, &str, bool, bool); 3] = [
    ("default (fsync)", "fsync", true, true),
    ("NRVNA_FSYNC=0", "nofsync", false, true),
    ("NRVNA_SPARES=0 (fsync)", "nospares", true, false),
];

/// One variant, as JSON. Its workspaces stay; the JSON lists them for
/// [`run`] to remove once every variant ran.
fn variant(ctx: &Ctx, tag: &'static str, fsync: bool, spares: bool) -> Value {
    let mut pairs = Vec::new();
    if !fsync {
        pairs.push(("NRVNA_FSYNC", "0"));
    }
    if !spares {
        pairs.push(("NRVNA_SPARES", "0"));
    }
    let mut r = Run {
        ctx,
        n: if ctx.quick { 500 } else { 10_000 },
        denv: env(&pairs),
        tag,
        settings: Settings {
            fsync,
            ..Settings::default()
        },
        problems: Vec::new(),
        kept: Vec::new(),
    };
    let create_us = create_cost(&mut r.kept)
        .map_err(|e| r.problems.push(format!("{e:#}")))
        .ok();
    eprintln!("queue ({tag}): end to end, {} jobs", r.n);
    let e2e = end_to_end(&mut r).unwrap_or_else(|e| {
        r.problems.push(format!("queue {tag} end to end: {e:#}"));
        json!({ "error": format!("{e:#}") })
    });
    eprintln!("queue ({tag}): submit alone, then drain alone");
    let (submit, drain) = submit_then_drain(&mut r).unwrap_or_else(|e| {
        r.problems.push(format!("queue {tag} submit/drain: {e:#}"));
        (
            json!({ "error": format!("{e:#}") }),
            json!({ "error": format!("{e:#}") }),
        )
    });
    json!({
        "fsync": fsync,
        "spares": spares,
        "jobs": r.n,
        "publisher_threads": PUBLISHERS,
        "create_us_at_start": create_us,
        "end_to_end": e2e,
        "submit": submit,
        "drain": drain,
        "problems": r.problems,
        "workspaces": r.kept,
    })
}

pub fn run(ctx: &Ctx) -> Result<Section> {
    let mut sec = Section::new("queue");
    let mut variants = Vec::new();
    for (name, tag, fsync, spares) in VARIANTS {
        let v = variant(ctx, tag, fsync, spares);
        if let Some(e) = v["error"].as_str() {
            sec.problems.push(format!("queue {name}: {e}"));
        }
        for p in v["problems"].as_array().into_iter().flatten() {
            sec.problems
                .push(format!("queue {name}: {}", p.as_str().unwrap_or_default()));
        }
        variants.push((name, v));
    }
    for (_, v) in &variants {
        for w in v["workspaces"].as_array().into_iter().flatten() {
            if let Some(w) = w.as_str() {
                let _ = std::fs::remove_dir_all(w);
            }
        }
    }
    let f = |v: &Value, path: &[&str]| {
        let mut x = v;
        for p in path {
            x = &x[*p];
        }
        x.as_f64()
    };
    let rate_paths: [(&str, &[&str]); 4] = [
        ("end to end", &["end_to_end", "jobs_per_s"]),
        ("submit under load", &["end_to_end", "submit_jobs_per_s_under_load"]),
        ("submit alone", &["submit", "jobs_per_s"]),
        ("drain alone", &["drain", "jobs_per_s"]),
    ];
    let mut rows = Vec::new();
    for (name, v) in &variants {
        let mut r = vec![(*name).to_owned()];
        for (_, p) in &rate_paths {
            r.push(opt(f(v, p), 0));
        }
        r.push(opt(f(v, &["drain", "wall_s"]), 2));
        r.push(opt(f(v, &["end_to_end", "peak_rss_mb"]), 1));
        r.push(opt(f(v, &["drain", "peak_rss_mb"]), 1));
        r.push(format!(
            "{} / {}",
            opt(f(v, &["end_to_end", "daemon", "cpu_s"]), 1),
            opt(f(v, &["drain", "daemon", "cpu_s"]), 1)
        ));
        r.push(opt(f(v, &["drain", "daemon", "others_cores"]), 2));
        r.push(opt(f(v, &["create_us_at_start"]), 0));
        rows.push(r);
    }
    let (on, off, nospares) = (&variants[0].1, &variants[1].1, &variants[2].1);
    let mut ratios = |label: &str, num: &Value, den: &Value| {
        let mut m = serde_json::Map::new();
        let mut row = vec![label.to_owned()];
        for (name, p) in &rate_paths {
            let c = ratio(f(num, p), f(den, p));
            m.insert((*name).to_owned(), json!(c));
            row.push(c.map_or("–".into(), |x| format!("{x:.2}x")));
        }
        row.extend(std::iter::repeat_n(String::new(), 6));
        rows.push(row);
        m
    };
    let cost = ratios("fsync cost (off / on)", off, on);
    let spares_gain = ratios("spare files (on / off, fsync)", on, nospares);
    let n = on["jobs"].as_u64().or(off["jobs"].as_u64()).unwrap_or(0);
    sec.json = json!({
        "default": on,
        "nofsync": off,
        "nospares": nospares,
        "fsync_cost_ratio": cost,
        "spares_gain_ratio": spares_gain,
    });
    sec.md = format!(
        "## Queue alone: {n} jobs, echo engine\n\n\
         `nrvnad echo WS --engine echo --workers 4`; jobs published in-process with \
         `Submission::publish` from {PUBLISHERS} threads. End to end: from the first publish until all \
         jobs are in output/ (counted every 20 ms) on a running daemon. Submit alone: publishing into \
         a workspace with no daemon. Drain alone: `--drain` on that pre-filled workspace, from spawn \
         until all jobs are in output/ (the drain wall also includes the idle check and exit). \
         Variants run one after another in this process; NRVNA_FSYNC=0 applies to the publishers (their workspace's settings) and the daemon; \
         NRVNA_SPARES=0 makes the daemon free the files it replaces instead of keeping them as spares. \
         No workspace is removed before all variants ran. \
         Other load is the CPU the rest of the machine used during the drain (this benchmark's \
         20 ms polling included), in cores. File create µs: the mean time to create an empty file \
         in a fresh directory of the same temp dir just before the variant ran (on ext4 without a \
         journal it grows with the files freed nearby in the last minutes).\n\n{}",
        table(
            &[
                "durability",
                "end to end jobs/s",
                "submit under load jobs/s",
                "submit alone jobs/s",
                "drain alone jobs/s",
                "drain wall s",
                "peak RSS MB (end to end)",
                "peak RSS MB (drain)",
                "daemon CPU s (end to end / drain)",
                "other load (cores, drain)",
                "file create µs at start",
            ],
            &rows,
        )
    );
    sec.targets.push(Target::at_least(
        "Queue end to end, default durability",
        f(on, &["end_to_end", "jobs_per_s"]),
        2000.0,
        " jobs/s",
    ));
    sec.targets.push(Target::at_least(
        "Queue end to end, NRVNA_FSYNC=0",
        f(off, &["end_to_end", "jobs_per_s"]),
        2000.0,
        " jobs/s",
    ));
    Ok(sec)
}
