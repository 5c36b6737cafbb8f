//! Scaling and a second model. `scale`: the W16 job, 64 and 256 of them
//! (more jobs than the batched engine's 16 slots), to show how cost grows
//! with the queue. `gemma`: W16 and the probe on Gemma 3 270M (Q4_K_M), to
//! show that the engine's choices hold beyond SmolLM2.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::{json, Value};

use super::probe::{self, Best};
use super::w16::TOPICS;
use super::{submit_and_drain_model, Ctx, Drained};
use crate::report::{opt, table, Section, Target};
use crate::stats::ratio;
use crate::tools::env;

const DEADLINE: Duration = Duration::from_secs(1800);

fn nproc() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

/// `n` W16-style prompts; past the 16 topics they are numbered, so that no
/// two jobs are the same prompt.
fn prompts(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let t = TOPICS[i % TOPICS.len()];
            match i / TOPICS.len() {
                0 => format!("Write a short paragraph about {t}."),
                k => format!("Write a short paragraph about {t} (variation {k})."),
            }
        })
        .collect()
}

struct Row {
    jobs: usize,
    engine: &'static str,
    workers: u32,
    d: Drained,
}

/// Drains `n` jobs with each (engine, workers) on `model`; one table row each.
fn drain_rows(ctx: &Ctx, model: &Path, tag: &str, sizes: &[usize], configs: &[(&'static str, u32)]) -> Vec<Row> {
    let predict: u32 = if ctx.quick { 16 } else { 64 };
    let predict_s = predict.to_string();
    let denv = env(&[
        ("NRVNA_TEMP", "0"),
        ("NRVNA_PREDICT", &predict_s),
        ("NRVNA_MAX_CTX", "2048"),
    ]);
    let mut rows = Vec::new();
    for &n in sizes {
        for &(engine, workers) in configs {
            let label = format!("{tag}-w{n}-{engine}-x{workers}");
            eprintln!("{label}: {n} jobs, {predict} tokens each");
            let w = workers.to_string();
            let d = submit_and_drain_model(
                ctx,
                model,
                &label,
                &prompts(n),
                &["--engine", engine, "--workers", &w],
                &denv,
                DEADLINE,
            );
            rows.push(Row {
                jobs: n,
                engine,
                workers,
                d,
            });
        }
    }
    rows
}

fn rows_md(rows: &[Row], best: &Best, problems: &mut Vec<String>) -> (String, Vec<Value>) {
    let pb = best.batch.as_ref().map(|b| b.0);
    let ps = best.single.as_ref().map(|b| b.0);
    let mut md_rows = Vec::new();
    let mut js = Vec::new();
    for r in rows {
        let (p, status) = r.d.problems(r.jobs);
        problems.extend(p);
        let per_job_ms = ratio(r.d.processing(), Some(r.jobs as f64)).map(|s| s * 1000.0);
        md_rows.push(vec![
            r.jobs.to_string(),
            r.engine.to_owned(),
            r.workers.to_string(),
            opt(r.d.wall, 2),
            opt(r.d.load, 2),
            opt(ratio(Some(r.d.totals.done as f64), r.d.wall), 2),
            opt(r.d.tok_s(), 1),
            opt(per_job_ms, 0),
            opt(ratio(r.d.tok_s(), ps), 2),
            opt(ratio(r.d.tok_s(), pb), 2),
            opt(r.d.peak_rss_mb(), 1),
            opt(r.d.others_cores, 2),
            status,
        ]);
        let mut v = r.d.to_json();
        v["jobs_count"] = json!(r.jobs);
        v["engine"] = json!(r.engine);
        v["workers"] = json!(r.workers);
        v["processing_ms_per_job"] = json!(per_job_ms);
        v["tok_s_vs_probe_best_single"] = json!(ratio(r.d.tok_s(), ps));
        v["tok_s_vs_probe_best_batch"] = json!(ratio(r.d.tok_s(), pb));
        js.push(v);
    }
    let md = table(
        &[
            "jobs",
            "engine",
            "workers",
            "wall s",
            "load s",
            "jobs/s",
            "tok/s",
            "processing ms/job",
            "/ probe B=1 best",
            &format!("/ probe B={} best", best.batch_seqs),
            "peak RSS MB",
            "other load (cores)",
            "status",
        ],
        &md_rows,
    );
    (md, js)
}

fn batched_tok_s(rows: &[Row], jobs: usize) -> Option<f64> {
    rows.iter()
        .find(|r| r.engine == "batched" && r.jobs == jobs && r.d.complete(jobs))
        .and_then(|r| r.d.tok_s())
}

/// W64 and W256 on the default model.
pub fn run(ctx: &Ctx) -> Result<Section> {
    ctx.require_model()?;
    let sizes: &[usize] = if ctx.quick { &[8, 32] } else { &[64, 256] };
    let rows = drain_rows(
        ctx,
        &ctx.model,
        "scale",
        sizes,
        &[("per-job", nproc()), ("batched", 16)],
    );
    let mut sec = Section::new("scale");
    let best = ctx.probe.clone().unwrap_or_default();
    let (table_md, js) = rows_md(&rows, &best, &mut sec.problems);
    let (small, big) = (sizes[0], sizes[1]);
    let growth = ratio(batched_tok_s(&rows, big), batched_tok_s(&rows, small));
    sec.json = json!({ "runs": js, "batched_tok_s_big_vs_small": growth });
    sec.md = format!(
        "## Scaling: {small} and {big} jobs\n\n\
         The W16 job, {small} and {big} of them (past the 16 topics, numbered variations), \
         drained as in W16 by the per-job engine at {} workers and the batched engine at 16 \
         (more jobs than slots: each slot takes the next job as one finishes). Processing ms/job \
         is (wall - load) / jobs. \"/ probe\" as in W16.\n\n{table_md}",
        nproc()
    );
    sec.targets.push(Target::at_least(
        &format!("Batched x16 tok/s, W{big} vs W{small} (no fall-off past the slots)"),
        growth,
        0.9,
        "x",
    ));
    Ok(sec)
}

/// W16 and the probe on Gemma 3 270M.
pub fn gemma(ctx: &Ctx, model: &Path) -> Result<Section> {
    if !model.is_file() {
        bail!(
            "model {} not found; fetch it with: scripts/fetch-model.sh gemma",
            model.display()
        );
    }
    let mut sec = Section::new("gemma");
    let specs = probe::specs(ctx, false);
    let (probe_md, probe_json, best) = probe::run_specs(ctx, model, &specs, &mut sec.problems);
    let n = probe::batch_seqs(ctx.quick) as usize;
    let rows = drain_rows(
        ctx,
        model,
        "gemma",
        &[n],
        &[("per-job", 1), ("per-job", nproc()), ("batched", 16)],
    );
    let (table_md, js) = rows_md(&rows, &best, &mut sec.problems);
    let b = batched_tok_s(&rows, n);
    let pj_best_wall = rows
        .iter()
        .filter(|r| r.engine == "per-job" && r.d.complete(n))
        .filter_map(|r| r.d.wall)
        .min_by(f64::total_cmp);
    let b_wall = rows
        .iter()
        .find(|r| r.engine == "batched" && r.d.complete(n))
        .and_then(|r| r.d.wall);
    sec.json = json!({ "model": model.display().to_string(), "probe": probe_json, "runs": js });
    sec.md = format!(
        "## Gemma 3 270M (Q4_K_M): W{n} and the probe\n\n\
         `{}`. The W16 job as above, then the probe with every core.\n\n{table_md}\n{probe_md}",
        model.display()
    );
    sec.targets.push(Target::at_least(
        "Gemma W16 batched tok/s vs best probe configuration",
        ratio(b, best.batch.as_ref().map(|x| x.0)),
        0.9,
        "x",
    ));
    sec.targets.push(Target::at_least(
        "Gemma W16 batched vs per-job best (wall)",
        ratio(pj_best_wall, b_wall),
        2.2,
        "x",
    ));
    Ok(sec)
}
