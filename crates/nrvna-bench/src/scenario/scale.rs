//! Scaling and a second model. `scale`: the W16 job, 64 and 256 of them
//! (more jobs than the batched engine's 16 slots), to show how cost grows
//! with the queue. `gemma`: W16 and the probe on Gemma 3 270M (Q4_K_M), to
//! show that the engine's choices hold beyond SmolLM2.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::{json, Value};

use super::probe;
use super::shape::{daemon_env, predict, TOPICS};
use super::{rounds, submit_and_drain_model, Ctx, Drained};
use crate::report::{opt, table, Section, Target};
use crate::stats::ratio;

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
    /// tok/s of every round, where the row is the median of several.
    by_round: Option<String>,
    /// The table's status word(s).
    status: String,
}

/// Drains `n` jobs with each (engine, workers) on `model`; one table row each.
fn drain_rows(ctx: &Ctx, model: &Path, tag: &str, sizes: &[usize], configs: &[(&'static str, u32)]) -> Vec<Row> {
    let predict = predict(ctx.quick);
    let denv = daemon_env(predict);
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
                status: d.problems(n).1,
                d,
                by_round: None,
            });
        }
    }
    rows
}

/// The rows as a table and as JSON; `ps` and `pb` are the probe's tok/s
/// with one sequence and with a batch, and `batch_seqs` that batch's size.
fn rows_md(rows: &[Row], (ps, pb, batch_seqs): (Option<f64>, Option<f64>, u32)) -> (String, Vec<Value>) {
    let rounds = rows.iter().any(|r| r.by_round.is_some());
    let mut md_rows = Vec::new();
    let mut js = Vec::new();
    for r in rows {
        let per_job_ms = ratio(r.d.processing(), Some(r.jobs as f64)).map(|s| s * 1000.0);
        let mut cells = vec![
            r.jobs.to_string(),
            r.engine.to_owned(),
            r.workers.to_string(),
            opt(r.d.wall, 2),
            opt(r.d.load, 2),
            opt(ratio(Some(r.d.totals.done as f64), r.d.wall), 2),
            opt(r.d.tok_s(), 1),
        ];
        if rounds {
            cells.push(r.by_round.clone().unwrap_or_default());
        }
        cells.extend([
            opt(per_job_ms, 0),
            opt(ratio(r.d.tok_s(), ps), 2),
            opt(ratio(r.d.tok_s(), pb), 2),
            opt(r.d.peak_rss_mb(), 1),
            opt(r.d.others_cores, 2),
            r.status.clone(),
        ]);
        md_rows.push(cells);
        let mut v = r.d.to_json();
        v["jobs_count"] = json!(r.jobs);
        v["engine"] = json!(r.engine);
        v["workers"] = json!(r.workers);
        v["processing_ms_per_job"] = json!(per_job_ms);
        v["tok_s_vs_probe_best_single"] = json!(ratio(r.d.tok_s(), ps));
        v["tok_s_vs_probe_best_batch"] = json!(ratio(r.d.tok_s(), pb));
        js.push(v);
    }
    let b_head = format!("/ probe B={batch_seqs} best");
    let mut head = vec!["jobs", "engine", "workers", "wall s", "load s", "jobs/s", "tok/s"];
    if rounds {
        head.push("tok/s by round");
    }
    head.extend([
        "processing ms/job",
        "/ probe B=1 best",
        &b_head,
        "peak RSS MB",
        "other load (cores)",
        "status",
    ]);
    let md = table(&head, &md_rows);
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
    for r in &rows {
        sec.problems.extend(r.d.problems(r.jobs).0);
    }
    let probe = (best.single_tok_s(), best.batch_tok_s(), best.batch_seqs);
    let (table_md, js) = rows_md(&rows, probe);
    let (small, big) = (sizes[0], sizes[1]);
    let growth = ratio(batched_tok_s(&rows, big), batched_tok_s(&rows, small));
    sec.json = json!({ "runs": js, "batched_tok_s_big_vs_small": growth });
    sec.md = format!(
        "## Scaling: {small} and {big} jobs\n\n\
         The W16 job, {small} and {big} of them (past the 16 topics, numbered variations), \
         drained as in W16 by the per-job engine at {} workers and the batched engine at 16 \
         (more jobs than slots: each slot takes the next job as one finishes). Processing ms/job \
         is (wall - load) / jobs. \"/ probe\" divides by the probe scenario's best figures \
         (its single pass, not W16's medians: these runs are too long to repeat).\n\n{table_md}",
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
    let denv = daemon_env(predict(ctx.quick));
    let all = prompts(n);
    let configs = [("per-job", 1), ("per-job", nproc()), ("batched", 16)];
    let plan = rounds::Plan {
        tag: "gemma",
        model,
        prompts: &all,
        env: &denv,
        configs: &configs,
        deadline: DEADLINE,
    };
    let mut m = rounds::run(ctx, &plan, &best, ctx.rounds, &mut sec.problems);
    let rows: Vec<Row> = std::mem::take(&mut m.configs)
        .into_iter()
        .map(|mut c| {
            sec.problems.extend(c.problems(n));
            let status = c.status(n);
            let by_round = c.by_round();
            let i = c.row_index(n);
            Row {
                jobs: n,
                engine: c.engine,
                workers: c.workers,
                d: c.runs.swap_remove(i),
                by_round: Some(by_round),
                status,
            }
        })
        .collect();
    let probe_medians = (m.probe_single(), m.probe_batch(), best.batch_seqs);
    let (table_md, js) = rows_md(&rows, probe_medians);
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
    sec.json = json!({
        "model": model.display().to_string(),
        "probe": probe_json,
        "rounds": m.rounds,
        "probe_rounds": m.probe_json(),
        "runs": js,
    });
    sec.md = format!(
        "## Gemma 3 270M (Q4_K_M): W{n} and the probe\n\n\
         `{}`. The probe with every core first (the table below this one), then the W{n} job \
         in {} rounds as in W16: each round runs the probe's best configurations again \
         ({}), then each daemon once; a row is the round with its median tok/s, and \
         \"/ probe\" divides by the probe's medians.\n\n{table_md}\n{probe_md}",
        model.display(),
        m.rounds,
        m.probe_text(),
    );
    sec.targets.push(Target::at_least(
        "Gemma W16 batched tok/s vs best probe configuration",
        ratio(b, probe_medians.1),
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
