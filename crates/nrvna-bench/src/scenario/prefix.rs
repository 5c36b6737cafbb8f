//! Shared prefix: 32 jobs that open with the same ~400-token instruction
//! and end with a short question each, on the batched engine at 8 workers,
//! with prefix reuse on (the default) and off (NRVNA_PREFIX_REUSE_MIN=0).

use std::time::Duration;

use anyhow::Result;
use serde_json::json;

use super::{submit_and_drain, Ctx, Drained};
use crate::report::{opt, table, Section, Target};
use crate::stats::ratio;
use crate::tools::env;

/// The shared instruction: about 1,700 characters (~400 tokens).
pub const GUIDANCE: &str = "You are a careful assistant who answers short questions for a \
classroom of curious students. Follow these style rules for every answer. First, give the \
answer itself in the opening sentence, stated plainly, without repeating the question and \
without any greeting. Second, keep the whole answer brief: two or three sentences are \
enough, and never more than five. Third, use simple words that a twelve-year-old would \
understand, and explain any technical term the first time you use it. Fourth, when the \
question involves numbers, show the arithmetic step by step in one line, for example \
\"4 + 5 = 9\", and then state the result again in words. Fifth, do not guess: if a \
question cannot be answered with certainty, say what is known and what is not, in one \
sentence. Sixth, write in a friendly but neutral tone; avoid jokes, exclamation marks, \
emojis, and rhetorical questions. Seventh, do not use bullet points, headings, tables, \
code blocks, or bold text; write plain sentences only. Eighth, prefer the metric system \
and give units for every measurement. Ninth, if the question contains a mistake, point it \
out gently and answer the corrected question instead. Tenth, never mention these rules, \
never describe yourself, and never add a closing remark such as an offer to help further. \
Eleventh, spell numbers below ten as words inside sentences, but use digits in the \
arithmetic line. Twelfth, check the answer once before writing it, and if two readings of \
the question are possible, answer the more common one and mention the other in a short \
clause. Thirteenth, keep every sentence under twenty-five words. Read the question below \
and answer it following all of these rules.";

const DEADLINE: Duration = Duration::from_secs(900);

pub fn run(ctx: &Ctx) -> Result<Section> {
    ctx.require_model()?;
    let (n, predict) = if ctx.quick { (8, 16) } else { (32, 32) };
    let prompts: Vec<String> = (0..n)
        .map(|i| format!("{GUIDANCE}\n\nQuestion: what is 2+{i}?"))
        .collect();
    let predict_s = predict.to_string();
    let base = [
        ("NRVNA_TEMP", "0"),
        ("NRVNA_PREDICT", predict_s.as_str()),
        ("NRVNA_MAX_CTX", "4096"),
    ];
    let daemon_args = ["--engine", "batched", "--workers", "8"];
    let mut runs: Vec<(&str, Drained)> = Vec::new();
    for (name, extra) in [("on", None), ("off", Some(("NRVNA_PREFIX_REUSE_MIN", "0")))] {
        let mut e = env(&base);
        if let Some((k, v)) = extra {
            e.push((k.into(), v.into()));
        }
        let label = format!("prefix-reuse-{name}");
        eprintln!("{label}: {n} jobs sharing a {}-character instruction", GUIDANCE.len());
        runs.push((
            name,
            submit_and_drain(ctx, &label, &prompts, &daemon_args, &e, DEADLINE),
        ));
    }
    let on = &runs[0].1;
    let off = &runs[1].1;
    let speedup = if on.complete(n) && off.complete(n) {
        ratio(off.processing(), on.processing())
    } else {
        None
    };
    let speedup_wall = if on.complete(n) && off.complete(n) {
        ratio(off.wall, on.wall)
    } else {
        None
    };

    let mut sec = Section::new("prefix");
    let mut rows = Vec::new();
    let mut jruns = serde_json::Map::new();
    for (name, d) in &runs {
        let (problems, status) = d.problems(n);
        sec.problems.extend(problems);
        let mean_prompt = ratio(Some(d.totals.prompt_tokens as f64), Some(d.totals.done as f64));
        rows.push(vec![
            (*name).to_owned(),
            opt(d.wall, 2),
            opt(d.load, 2),
            opt(d.processing(), 2),
            opt(d.last_done, 2),
            opt(d.tok_s(), 1),
            opt(d.tok_s_wall(), 1),
            d.totals.reused_prompt_tokens.to_string(),
            opt(mean_prompt, 0),
            opt(d.peak_rss_mb(), 1),
            opt(d.others_cores, 2),
            status,
        ]);
        let mut v = d.to_json();
        v["mean_prompt_tokens"] = json!(mean_prompt);
        jruns.insert((*name).to_owned(), v);
    }
    sec.json = json!({
        "jobs": n,
        "max_tokens": predict,
        "instruction_chars": GUIDANCE.len(),
        "daemon_args": daemon_args,
        "speedup_processing": speedup,
        "speedup_wall": speedup_wall,
        "runs": jruns,
    });
    sec.md = format!(
        "## Shared prefix: {n} jobs, one {}-character instruction, {predict} tokens each\n\n\
         Each prompt is the same instruction followed by \"Question: what is 2+{{i}}?\"; \
         `nrvnad MODEL WS --drain --engine batched --workers 8` with NRVNA_TEMP=0 \
         NRVNA_PREDICT={predict} NRVNA_MAX_CTX=4096, once with prefix reuse (default) and once \
         with NRVNA_PREFIX_REUSE_MIN=0. Processing is wall minus load; reused is the sum of \
         meta.json `reused_prompt_tokens`; prompt tokens are per job (chat template included).\n\n{}\n\
         Speed-up with reuse: **{}** on processing time, {} on wall (load included).\n",
        GUIDANCE.len(),
        table(
            &[
                "reuse",
                "wall s",
                "load s",
                "processing s",
                "last job done s",
                "tok/s",
                "tok/s (wall)",
                "reused prompt tokens",
                "prompt tokens/job",
                "peak RSS MB",
                "other load (cores)",
                "status",
            ],
            &rows,
        ),
        speedup.map_or("–".into(), |x| format!("{x:.2}x")),
        speedup_wall.map_or("–".into(), |x| format!("{x:.2}x")),
    );
    sec.targets.push(Target::at_least(
        "Shared prefix: reuse on vs off (processing time)",
        speedup,
        1.5,
        "x",
    ));
    let rss = runs.iter().filter_map(|(_, d)| d.peak_rss_mb()).max_by(f64::total_cmp);
    sec.targets.push(Target::at_most(
        "Peak RSS, shared prefix batched 8 workers (larger run)",
        rss,
        220.0,
        " MB",
    ));
    Ok(sec)
}
