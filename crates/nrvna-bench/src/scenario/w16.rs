//! W16: 16 short-paragraph jobs pre-submitted with `wrk`, drained by the
//! per-job engine at 1, 2 and 4 workers and by the batched engine at 4, 8
//! and 16, greedy (NRVNA_TEMP=0) so that outputs can be compared.

use std::time::Duration;

use anyhow::Result;
use serde_json::{json, Value};

use super::shape::{daemon_env, predict, TOPICS};
use super::{rounds, Ctx, Drained};
use crate::report::{opt, table, Section, Target};
use crate::stats::ratio;

const CONFIGS: [(&str, u32); 6] = [
    ("per-job", 1),
    ("per-job", 2),
    ("per-job", 4),
    ("batched", 4),
    ("batched", 8),
    ("batched", 16),
];

/// A daemon run killed after this long is reported as timed out.
const DEADLINE: Duration = Duration::from_secs(900);

/// One configuration's row: its rounds, and the round with the median tok/s.
struct Run<'a> {
    c: &'a rounds::Config,
    d: &'a Drained,
    at_max: usize,
}

impl Run<'_> {
    fn wall(&self) -> Option<f64> {
        self.d.wall
    }
}

pub fn run(ctx: &Ctx) -> Result<Section> {
    ctx.require_model()?;
    let n: usize = if ctx.quick { 4 } else { 16 };
    let predict = predict(ctx.quick);
    let topics = &TOPICS[..n];
    let prompts: Vec<String> = topics
        .iter()
        .map(|t| format!("Write a short paragraph about {t}."))
        .collect();
    let predict_s = predict.to_string();
    let denv = daemon_env(predict);
    let mut sec = Section::new("w16");
    let plan = rounds::Plan {
        tag: "w16",
        model: &ctx.model,
        prompts: &prompts,
        env: &denv,
        configs: &CONFIGS,
        deadline: DEADLINE,
    };
    let best = ctx.probe.clone().unwrap_or_default();
    let m = rounds::run(ctx, &plan, &best, ctx.rounds, &mut sec.problems);
    let runs: Vec<Run> = m
        .configs
        .iter()
        .map(|c| {
            sec.problems.extend(c.problems(n));
            let d = c.row(n);
            let at_max = d
                .jobs
                .iter()
                .filter(|j| j.done() && j.num("generated_tokens") >= u64::from(predict))
                .count();
            Run { c, d, at_max }
        })
        .collect();

    let best_of = |engine: &str| {
        runs.iter()
            .filter(|r| r.c.engine == engine && r.d.complete(n))
            .min_by(|a, b| a.wall().unwrap_or(f64::MAX).total_cmp(&b.wall().unwrap_or(f64::MAX)))
    };
    let best_pj = best_of("per-job");
    let best_b = best_of("batched");

    let (probe_single, probe_batch) = (m.probe_single(), m.probe_batch());
    let vs_single = |r: &Run| ratio(r.d.tok_s(), probe_single);
    let vs_batch = |r: &Run| ratio(r.d.tok_s(), probe_batch);
    let mut rows = Vec::new();
    let mut jruns = Vec::new();
    for r in &runs {
        let speedup = ratio(best_pj.and_then(Run::wall), r.wall());
        let tok_ratio = ratio(r.d.tok_s(), best_pj.and_then(|b| b.d.tok_s()));
        let identical = match (r.c.engine, best_pj) {
            ("batched", Some(b)) => Some(
                r.d.jobs
                    .iter()
                    .zip(&b.d.jobs)
                    .filter(|(x, y)| x.result.is_some() && x.result == y.result)
                    .count(),
            ),
            _ => None,
        };
        rows.push(vec![
            r.c.engine.to_owned(),
            r.c.workers.to_string(),
            opt(r.wall(), 2),
            opt(r.d.load, 2),
            opt(r.d.last_done, 2),
            opt(ratio(Some(r.d.totals.done as f64), r.wall()), 2),
            opt(r.d.tok_s(), 1),
            r.c.by_round(),
            opt(r.d.tok_s_wall(), 1),
            format!("{}/{n}", r.at_max),
            opt(r.d.peak_rss_mb(), 1),
            speedup.map_or("–".into(), |x| format!("{x:.2}x")),
            tok_ratio.map_or("–".into(), |x| format!("{x:.2}x")),
            identical.map_or("–".into(), |x| format!("{x}/{n}")),
            vs_single(r).map_or("–".into(), |x| format!("{x:.2}")),
            vs_batch(r).map_or("–".into(), |x| format!("{x:.2}")),
            opt(r.d.others_cores, 2),
            r.c.status(n),
        ]);
        let results: serde_json::Map<String, Value> = topics
            .iter()
            .zip(&r.d.jobs)
            .map(|(t, j)| ((*t).to_owned(), json!(j.result)))
            .collect();
        let mut v = r.d.to_json();
        v["engine"] = json!(r.c.engine);
        v["workers"] = json!(r.c.workers);
        v["tok_s_by_round"] = json!(r.c.tok_s_by_round());
        v["jobs_at_max_tokens"] = json!(r.at_max);
        v["wall_ratio_vs_perjob_best"] = json!(ratio(r.wall(), best_pj.and_then(Run::wall)));
        v["wall_speedup_vs_perjob_best"] = json!(speedup);
        v["tokens_per_s_ratio_vs_perjob_best"] = json!(tok_ratio);
        v["identical_results_vs_perjob_best"] = json!(identical);
        v["tok_s_vs_probe_best_single"] = json!(vs_single(r));
        v["tok_s_vs_probe_best_batch"] = json!(vs_batch(r));
        v["results"] = Value::Object(results);
        jruns.push(v);
    }
    let headline = ratio(best_pj.and_then(Run::wall), best_b.and_then(Run::wall));
    sec.json = json!({
        "jobs": n,
        "max_tokens": predict,
        "env": {"NRVNA_TEMP": "0", "NRVNA_PREDICT": predict_s, "NRVNA_MAX_CTX": "2048"},
        "perjob_best_workers": best_pj.map(|r| r.c.workers),
        "batched_best_workers": best_b.map(|r| r.c.workers),
        "batched_best_vs_perjob_best_wall": headline,
        "rounds": m.rounds,
        "probe_rounds": m.probe_json(),
        "runs": jruns,
    });
    sec.md = format!(
        "## W16: {n} jobs, {predict} tokens each\n\n\
         Jobs \"Write a short paragraph about {{topic}}.\" pre-submitted with `wrk`, then \
         `nrvnad MODEL WS --drain --engine E --workers N` with NRVNA_TEMP=0 NRVNA_PREDICT={predict} \
         NRVNA_MAX_CTX=2048, in {} rounds: each round runs the probe's best single-sequence and \
         best batch configurations again, then every row's daemon once, and a row is the round \
         with its median tok/s (every round's tok/s in \"tok/s by round\"). Wall is spawn to exit (load included); load is spawn until \
         `.nrvnad.ready`; last job done is spawn until the latest meta.json `completed_at` \
         (the rest of the wall is the drain's idle check and shutdown); tok/s is the sum of meta.json `generated_tokens` over wall minus load \
         (and over wall). Speed-up (best per-job wall / this wall) and tok/s ratio are against \
         the per-job engine at its best worker count (x{}); \"identical\" counts the topics \
         whose result.txt equals that run's. \"/ probe\" is this row's tok/s over the median tok/s of the \
         probe's re-runs in these rounds: {}. Other load is the CPU time the rest of the machine \
         used during the run (/proc/stat busy time minus the daemon's rusage), in cores.\n\n{}",
        m.rounds,
        best_pj.map_or("–".into(), |r| r.c.workers.to_string()),
        m.probe_text(),
        table(
            &[
                "engine",
                "workers",
                "wall s",
                "load s",
                "last job done s",
                "jobs/s",
                "tok/s",
                "tok/s by round",
                "tok/s (wall)",
                "at max tokens",
                "peak RSS MB",
                "speed-up (wall)",
                "tok/s ratio",
                "identical",
                "/ probe B=1 best",
                &format!("/ probe B={n} best"),
                "other load (cores)",
                "status",
            ],
            &rows,
        )
    );
    sec.targets.push(Target::at_least(
        "W16 batched best vs per-job best (wall, same run)",
        headline,
        2.2,
        "x",
    ));
    let b_best_tok = runs
        .iter()
        .filter(|r| r.c.engine == "batched" && r.d.complete(n))
        .filter_map(|r| r.d.tok_s())
        .max_by(f64::total_cmp);
    sec.targets.push(Target::at_least(
        "W16 batched best tok/s vs best probe configuration (same run)",
        ratio(b_best_tok, probe_batch),
        0.9,
        "x",
    ));
    let pj1 = runs
        .iter()
        .find(|r| r.c.engine == "per-job" && r.c.workers == 1 && r.d.complete(n));
    sec.targets.push(Target::at_least(
        "Per-job x1 tok/s vs best single-sequence probe (same run)",
        pj1.and_then(vs_single),
        0.9,
        "x",
    ));
    sec.targets.push(Target::at_most(
        "W16 batched best wall, load included",
        best_b.and_then(Run::wall),
        6.0,
        " s",
    ));
    let b8 = runs
        .iter()
        .find(|r| r.c.engine == "batched" && r.c.workers == 8)
        .and_then(|r| r.d.peak_rss_mb());
    sec.targets
        .push(Target::at_most("Peak RSS, W16 batched 8 workers", b8, 220.0, " MB"));
    Ok(sec)
}
