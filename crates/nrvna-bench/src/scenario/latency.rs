//! Latency on an idle persistent daemon (batched, 4 workers, one token per
//! job): publish-to-claim from meta.json `submitted_at`/`claimed_at`, and
//! `wrk WS --max-tokens 1 PROMPT | flw WS -w` end to end, 50 times each.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nrvna_core::files::{ERROR_FILE, META_FILE};
use nrvna_core::{JobId, State, Workspace};
use serde_json::{json, Value};

use super::{args, Ctx};
use crate::daemon::{kib_to_mb, Daemon, Ready};
use crate::report::{opt, table, Section, Target};
use crate::stats::{parse_iso8601_micros, percentile, summary_ms};
use crate::tools::{command, env, stop_daemon, wrk, Env, TempWs};

/// How long one job may take before the sample counts as an error.
const JOB_TIMEOUT: Duration = Duration::from_secs(60);

/// Publishes one job with `wrk`, waits for it to finish, and returns
/// claimed_at − submitted_at in milliseconds.
fn pickup_once(ctx: &Ctx, ws: &Path, i: usize) -> Result<f64> {
    let id = wrk(
        &ctx.bins,
        ws,
        &[&format!("Say one word about the number {i}.")],
        &Env::new(),
    )?;
    let jid = JobId::parse(&id).map_err(|e| anyhow!("wrk printed {id:?}: {e}"))?;
    let w = Workspace::open(ws)?;
    let start = Instant::now();
    let state = loop {
        match w.locate(&jid) {
            Some(s @ (State::Done | State::Failed)) => break s,
            _ if start.elapsed() > JOB_TIMEOUT => bail!("job {id} did not finish within {JOB_TIMEOUT:?}"),
            _ => std::thread::sleep(Duration::from_millis(1)),
        }
    };
    let dir = w.job_dir(state, &jid);
    if state == State::Failed {
        let why = std::fs::read_to_string(dir.join(ERROR_FILE)).unwrap_or_default();
        bail!("job {id} failed: {}", why.trim());
    }
    let meta: Value = serde_json::from_slice(&std::fs::read(dir.join(META_FILE))?)
        .with_context(|| format!("parsing meta.json of {id}"))?;
    let stamp = |k: &str| {
        meta[k]
            .as_str()
            .and_then(parse_iso8601_micros)
            .ok_or_else(|| anyhow!("meta.json of {id} has no valid `{k}`"))
    };
    Ok((stamp("claimed_at")? - stamp("submitted_at")?) as f64 / 1000.0)
}

/// `wrk WS --max-tokens 1 PROMPT | flw WS -w`, piped directly, timed from
/// before spawning wrk to flw's exit, in milliseconds.
fn pipe_once(ctx: &Ctx, ws: &Path, i: usize) -> Result<f64> {
    let prompt = format!("Say one word about the letter {}.", (b'a' + (i % 26) as u8) as char);
    let t0 = Instant::now();
    let mut w = command(&ctx.bins.wrk, &Env::new())
        .arg(ws)
        .args(["--max-tokens", "1", &prompt])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning wrk")?;
    let wout = w.stdout.take().context("wrk's stdout")?;
    let f = command(&ctx.bins.flw, &Env::new())
        .arg(ws)
        .args(["-w", "--timeout", "60"])
        .stdin(Stdio::from(wout))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning flw")?;
    let fo = f.wait_with_output().context("waiting for flw")?;
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    let wo = w.wait_with_output().context("waiting for wrk")?;
    if !wo.status.success() {
        bail!(
            "wrk exited with {}: {}",
            wo.status,
            String::from_utf8_lossy(&wo.stderr).trim()
        );
    }
    if !fo.status.success() {
        bail!(
            "flw -w exited with {}: {}",
            fo.status,
            String::from_utf8_lossy(&fo.stderr).trim()
        );
    }
    Ok(ms)
}

pub fn run(ctx: &Ctx) -> Result<Section> {
    ctx.require_model()?;
    let n = if ctx.quick { 10 } else { 50 };
    let ws = TempWs::new("latency")?;
    let denv = env(&[("NRVNA_PREDICT", "1")]);
    let argv = args([
        ctx.model.as_os_str(),
        ws.path().as_os_str(),
        "--engine".as_ref(),
        "batched".as_ref(),
        "--workers".as_ref(),
        "4".as_ref(),
    ]);
    let mut sec = Section::new("latency");
    let mut d = Daemon::spawn(&ctx.bins, "latency-batched-x4", &argv, &denv, ws.path(), &ctx.logs)?;
    let ready = d.wait_ready(Duration::from_secs(300));
    let mut pickup = Vec::new();
    let mut e2e = Vec::new();
    let mut errors = Vec::new();
    let mut idle_cores = None;
    if matches!(ready, Ready::Yes(_)) {
        // An idle daemon should use next to no CPU: measure it before the samples.
        let window = Duration::from_secs(if ctx.quick { 1 } else { 3 });
        if let Some(c0) = d.cpu_now() {
            std::thread::sleep(window);
            idle_cores = d.cpu_now().map(|c1| (c1 - c0) / window.as_secs_f64());
        }
        eprintln!(
            "latency: daemon ready in {} s; {n} samples of each",
            opt(d.load().map(|l| l.as_secs_f64()), 2)
        );
        for i in 0..n {
            match pickup_once(ctx, ws.path(), i) {
                Ok(ms) => pickup.push(ms),
                Err(e) => errors.push(format!("latency sample {i} (publish to claim): {e:#}")),
            }
            match pipe_once(ctx, ws.path(), i) {
                Ok(ms) => e2e.push(ms),
                Err(e) => errors.push(format!("latency sample {i} (wrk | flw -w): {e:#}")),
            }
            if !d.running() {
                errors.push(format!("the daemon exited during sample {i}"));
                break;
            }
        }
        if let Err(e) = stop_daemon(&ctx.bins, ws.path()) {
            errors.push(format!("{e:#}"));
        }
    } else {
        errors.push(format!("the daemon never became ready ({ready:?})"));
    }
    d.wait_exit(Duration::from_secs(60));
    if let Some(p) = d.problem() {
        // Stopped with SIGTERM, nrvnad exits 0; anything else is a problem.
        errors.push(p);
    }
    errors.truncate(20);
    sec.problems.extend(errors.iter().cloned());

    let rec = d.record();
    let rss = d.exit().map(|e| kib_to_mb(e.maxrss_kib));
    sec.json = json!({
        "samples": n,
        "daemon": rec,
        "idle_cpu_cores": idle_cores,
        "publish_to_claim": summary_ms(&pickup),
        "wrk_pipe_flw_wait": summary_ms(&e2e),
        "publish_to_claim_samples_ms": pickup,
        "wrk_pipe_flw_wait_samples_ms": e2e,
        "errors": errors,
    });
    let row = |name: &str, v: &[f64]| {
        vec![
            name.to_owned(),
            v.len().to_string(),
            opt(percentile(v, 50.0), 2),
            opt(percentile(v, 99.0), 2),
            opt(crate::stats::mean(v), 2),
            opt(percentile(v, 0.0), 2),
            opt(percentile(v, 100.0), 2),
        ]
    };
    sec.md = format!(
        "## Latency on an idle daemon\n\n\
         `nrvnad MODEL WS --engine batched --workers 4` with NRVNA_PREDICT=1 (load {} s, peak RSS {} MB, \
         {} CPU s over {} s of wall, {}). Idle, before the samples, the daemon used {} cores of CPU. \
         Then {n} sequential samples of each. Publish to claim is meta.json `claimed_at` − `submitted_at` \
         (`submitted_at` is stamped while staging, before the publishing rename). The pipe is spawned \
         without a shell, wrk's stdout feeding flw's stdin, and timed from before spawning wrk until flw \
         exits (`flw` also gets `--timeout 60` as a safety net). Percentiles are by nearest rank \
         (with {n} samples, p99 is the largest).\n\n{}",
        opt(d.load().map(|l| l.as_secs_f64()), 2),
        opt(rss, 1),
        opt(d.exit().map(|e| e.cpu_s), 1),
        opt(d.exit().map(|e| e.wall.as_secs_f64()), 1),
        if d.ok() {
            "stopped with `nrvnad stop WS`, exit 0".to_owned()
        } else {
            d.problem().unwrap_or_default()
        },
        opt(idle_cores, 3),
        table(
            &["measure", "n", "p50 ms", "p99 ms", "mean ms", "min ms", "max ms"],
            &[
                row("publish → claim", &pickup),
                row("`wrk WS --max-tokens 1 PROMPT | flw WS -w`", &e2e),
            ],
        )
    );
    sec.targets.push(Target::below(
        "Pickup latency p50",
        percentile(&pickup, 50.0),
        5.0,
        " ms",
    ));
    sec.targets.push(Target::below(
        "Pickup latency p99",
        percentile(&pickup, 99.0),
        50.0,
        " ms",
    ));
    sec.targets
        .push(Target::below("`wrk | flw -w` p50", percentile(&e2e, 50.0), 80.0, " ms"));
    Ok(sec)
}
