//! The engine-bound probe: the W16 prompts through a minimal decode loop on
//! llama.cpp (`nrvna_engine::probe`, no files, no queue), for each
//! configuration of flash attention, KV layout (one unified stream or one
//! per sequence) and threads, at 1 and 16 sequences. Its best figures are
//! what the daemon's throughput rows are divided by. Each configuration runs
//! in a child process (`nrvna-bench --probe-child SPEC`), so that one that
//! llama.cpp refuses, or that aborts, costs only its own row.

use std::path::Path;
use std::process::Stdio;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::shape::{predict, TOPICS};
use super::Ctx;
use crate::report::{opt, table, Section};
use crate::tools::{command, Env};

/// One probe configuration.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    pub seqs: u32,
    pub flash_attn: bool,
    pub kv_unified: bool,
    pub threads: u32,
    pub tokens: u32,
}

impl Spec {
    fn to_arg(self) -> String {
        format!(
            "{},{},{},{},{}",
            self.seqs,
            u8::from(self.flash_attn),
            u8::from(self.kv_unified),
            self.threads,
            self.tokens
        )
    }

    fn parse(s: &str) -> Result<Spec> {
        let v: Vec<u32> = s
            .split(',')
            .map(|x| x.trim().parse::<u32>())
            .collect::<Result<_, _>>()
            .with_context(|| format!("probe spec {s:?}: expected SEQS,FA,UNIFIED,THREADS,TOKENS"))?;
        let [seqs, fa, unified, threads, tokens] = v[..] else {
            bail!("probe spec {s:?}: expected 5 numbers SEQS,FA,UNIFIED,THREADS,TOKENS");
        };
        Ok(Spec {
            seqs,
            flash_attn: fa != 0,
            kv_unified: unified != 0,
            threads,
            tokens,
        })
    }

    pub fn label(&self) -> String {
        format!(
            "B={} fa={} kv={} threads={}",
            self.seqs,
            if self.flash_attn { "on" } else { "off" },
            if self.kv_unified { "unified" } else { "per-seq" },
            self.threads
        )
    }
}

/// The best probe figures of a run, for the daemon's rows: each a tok/s
/// and the configuration that gave it.
#[derive(Clone, Debug, Default)]
pub struct Best {
    /// Best tok/s with one sequence (jobs one after another, fresh context each).
    pub single: Option<(f64, Spec)>,
    /// Best tok/s with the batch size of the W16 batched rows.
    pub batch: Option<(f64, Spec)>,
    /// That batch size.
    pub batch_seqs: u32,
}

impl Best {
    pub fn single_tok_s(&self) -> Option<f64> {
        self.single.as_ref().map(|b| b.0)
    }

    pub fn batch_tok_s(&self) -> Option<f64> {
        self.batch.as_ref().map(|b| b.0)
    }
}

/// A best figure as JSON (`{"tok_s", "config"}`), or null.
fn best_json(b: &Option<(f64, Spec)>) -> Value {
    b.as_ref()
        .map_or(Value::Null, |(t, s)| json!({"tok_s": t, "config": s.label()}))
}

/// A best figure for prose: "121.5 tok/s (B=16 fa=on kv=per-seq threads=2)".
fn best_text(b: &Option<(f64, Spec)>) -> String {
    b.as_ref()
        .map_or("–".into(), |(t, s)| format!("{t:.1} tok/s ({})", s.label()))
}

/// Sequences of the batch configurations (the W16 job count).
pub fn batch_seqs(quick: bool) -> u32 {
    if quick {
        4
    } else {
        16
    }
}

/// Every configuration; `all_threads`: also with one thread (else only
/// with every core).
pub fn specs(ctx: &Ctx, all_threads: bool) -> Vec<Spec> {
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let tokens = predict(ctx.quick);
    let mut threads = vec![nproc];
    if nproc > 1 && all_threads {
        threads.push(1);
    }
    let mut v = Vec::new();
    for &t in &threads {
        for fa in [false, true] {
            v.push(Spec {
                seqs: 1,
                flash_attn: fa,
                kv_unified: true,
                threads: t,
                tokens,
            });
        }
    }
    for &t in &threads {
        for fa in [false, true] {
            for unified in [true, false] {
                v.push(Spec {
                    seqs: batch_seqs(ctx.quick),
                    flash_attn: fa,
                    kv_unified: unified,
                    threads: t,
                    tokens,
                });
            }
        }
    }
    v
}

/// Single-sequence configurations run this many jobs one after another.
const SINGLE_JOBS: usize = 4;

/// `nrvna-bench --probe-child SPEC`: one configuration, as JSON on stdout.
pub fn child(ctx: &Ctx, spec: &str) -> Result<Value> {
    let spec = Spec::parse(spec)?;
    ctx.require_model()?;
    let model = nrvna_engine::Model::load(&ctx.model, 0, None)?;
    let prompt = |i: usize| -> Result<Vec<_>> {
        let text = format!("Write a short paragraph about {}.", TOPICS[i % TOPICS.len()]);
        Ok(model.tokenize(&model.render(None, &text)?))
    };
    let cfg = nrvna_engine::probe::ProbeConfig {
        flash_attn: spec.flash_attn,
        kv_unified: spec.kv_unified,
        threads: spec.threads,
        n_ctx: 2048,
        n_batch: 512,
    };
    let mut total = nrvna_engine::probe::ProbeRun::default();
    // One sequence: jobs one after another in a fresh context each, like
    // the per-job engine; several: all in one context, like the batched one.
    let groups: Vec<Vec<usize>> = if spec.seqs == 1 {
        (0..SINGLE_JOBS).map(|i| vec![i]).collect()
    } else {
        vec![(0..spec.seqs as usize).collect()]
    };
    for g in groups {
        let prompts = g.iter().map(|&i| prompt(i)).collect::<Result<Vec<_>>>()?;
        let r = nrvna_engine::probe::run(&model.weights, &cfg, &prompts, spec.tokens as usize)?;
        total.prompt_tokens += r.prompt_tokens;
        total.shared_prefix += r.shared_prefix;
        total.generated += r.generated;
        total.prefill_secs += r.prefill_secs;
        total.gen_secs += r.gen_secs;
    }
    Ok(json!({
        "prompt_tokens": total.prompt_tokens,
        "shared_prefix_tokens": total.shared_prefix,
        "generated_tokens": total.generated,
        "prefill_s": total.prefill_secs,
        "gen_s": total.gen_secs,
        "tok_s": total.tok_s(),
        "gen_tok_s": total.gen_tok_s(),
    }))
}

/// Runs one configuration in a child process; its figures as JSON.
pub fn run_child(ctx: &Ctx, model: &Path, spec: Spec) -> Result<Value> {
    let mut c = command(&ctx.bins.me, &Env::new());
    c.arg("--probe-child")
        .arg(spec.to_arg())
        .arg("--out")
        .arg(&ctx.out)
        .arg("--model")
        .arg(model)
        .env("NRVNA_LOG_LEVEL", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let out = c.output().context("running nrvna-bench --probe-child")?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(3).collect();
        bail!(
            "exited with {}: {}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
        );
    }
    serde_json::from_slice(&out.stdout).context("reading the probe child's JSON")
}

/// Runs every configuration on the default model; returns the section and
/// the best figures.
pub fn run(ctx: &Ctx) -> Result<(Section, Best)> {
    ctx.require_model()?;
    let mut sec = Section::new("probe");
    let (md, json, best) = run_specs(ctx, &ctx.model, &specs(ctx, true), &mut sec.problems);
    sec.json = json;
    sec.md = format!("## Engine-bound probe\n\n{md}");
    Ok((sec, best))
}

/// Runs `specs` on `model`: (markdown without a heading, JSON, best figures);
/// configurations that failed are added to `problems`.
pub fn run_specs(ctx: &Ctx, model: &Path, specs: &[Spec], problems: &mut Vec<String>) -> (String, Value, Best) {
    let mut rows = Vec::new();
    let mut jruns = Vec::new();
    let mut best = Best {
        batch_seqs: batch_seqs(ctx.quick),
        ..Best::default()
    };
    for &spec in specs {
        let label = spec.label();
        let r = run_child(ctx, model, spec);
        let (v, status) = match r {
            Ok(v) => (v, "ok".to_owned()),
            Err(e) => {
                problems.push(format!("probe {label}: {e:#}"));
                (json!({ "error": format!("{e:#}") }), "failed".to_owned())
            }
        };
        let tok_s = v["tok_s"].as_f64();
        eprintln!("probe {label}: {} tok/s", opt(tok_s, 1));
        if let Some(t) = tok_s {
            let slot = if spec.seqs == 1 {
                &mut best.single
            } else {
                &mut best.batch
            };
            if slot.as_ref().is_none_or(|(b, _)| t > *b) {
                *slot = Some((t, spec));
            }
        }
        rows.push(vec![
            spec.seqs.to_string(),
            if spec.flash_attn { "on" } else { "off" }.to_owned(),
            if spec.kv_unified { "unified" } else { "per-seq" }.to_owned(),
            spec.threads.to_string(),
            opt(v["prefill_s"].as_f64(), 2),
            opt(v["gen_s"].as_f64(), 2),
            opt(tok_s, 1),
            opt(v["gen_tok_s"].as_f64(), 1),
            status,
        ]);
        let mut j = v.clone();
        j["seqs"] = json!(spec.seqs);
        j["flash_attn"] = json!(spec.flash_attn);
        j["kv_unified"] = json!(spec.kv_unified);
        j["threads"] = json!(spec.threads);
        j["tokens_per_seq"] = json!(spec.tokens);
        jruns.push(j);
    }
    let json = json!({
        "model": model.display().to_string(),
        "runs": jruns,
        "best_single": best_json(&best.single),
        "best_batch": best_json(&best.batch),
    });
    let md = format!(
        "The W16 prompts (rendered with the chat template) through a minimal decode loop on \
         llama.cpp (`nrvna_engine::probe`: greedy argmax, every token generated, no files, no \
         queue, no sampler chain), n_ctx 2048, n_batch 512. B=1: {SINGLE_JOBS} jobs one after \
         another, a fresh context each (the per-job engine's shape); B={}: all sequences in one \
         context (the batched engine's shape; per-seq = one KV stream per sequence, \
         `kv_unified=false`), the prefix all prompts share decoded once and copied to every \
         sequence, as the daemon's prefix reuse does. tok/s is generated tokens over prefill plus generation time; \
         gen tok/s over generation only. Best B=1: {}; best B={}: {}.\n\n{}",
        best.batch_seqs,
        best_text(&best.single),
        best.batch_seqs,
        best_text(&best.batch),
        table(
            &[
                "B",
                "flash attn",
                "KV",
                "threads",
                "prefill s",
                "gen s",
                "tok/s",
                "gen tok/s",
                "status"
            ],
            &rows
        )
    );
    (md, json, best)
}
