//! A minimal decode loop on llama.cpp with nothing around it: B sequences
//! prefilled, then N greedy tokens each, in one context (no files, no queue,
//! no sampler chains). It measures what the engine itself can do: the
//! benchmark's engine-bound probe runs it, and the daemon's flash-attention
//! choice at start (`NRVNA_FLASH_ATTN=auto`) times it on the actual backend.

use std::num::NonZeroU32;
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;

use crate::model::Model;
use crate::perjob::new_context;

/// One configuration of the context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeConfig {
    pub flash_attn: bool,
    /// One KV stream shared by all sequences (true) or one per sequence.
    pub kv_unified: bool,
    pub threads: u32,
    /// KV cells in all (per-sequence streams get an equal share each,
    /// padded by llama.cpp to 256).
    pub n_ctx: u32,
    pub n_batch: u32,
}

/// What one run measured.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProbeRun {
    pub prompt_tokens: usize,
    /// Prompt tokens all sequences share, decoded once and copied (as the
    /// daemon's prefix reuse does).
    pub shared_prefix: usize,
    pub generated: usize,
    /// Seconds decoding the prompts.
    pub prefill_secs: f64,
    /// Seconds generating (every decode after the prompts, and sampling).
    pub gen_secs: f64,
}

impl ProbeRun {
    /// Generated tokens over prefill plus generation time (the daemon's tok/s).
    pub fn tok_s(&self) -> f64 {
        self.generated as f64 / (self.prefill_secs + self.gen_secs).max(1e-9)
    }

    /// Generated tokens over generation time only.
    pub fn gen_tok_s(&self) -> f64 {
        self.generated as f64 / self.gen_secs.max(1e-9)
    }
}

/// The context parameters of a configuration for `seqs` sequences.
pub fn context_params(cfg: &ProbeConfig, seqs: u32) -> LlamaContextParams {
    let seqs = seqs.max(1);
    LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(cfg.n_ctx))
        .with_n_batch(cfg.n_batch)
        .with_n_ubatch(cfg.n_batch)
        .with_n_seq_max(seqs)
        .with_kv_unified(cfg.kv_unified)
        .with_flash_attention_policy(i32::from(cfg.flash_attn))
        .with_n_threads(cfg.threads as i32)
        .with_n_threads_batch(cfg.threads as i32)
}

/// Decodes every prompt as its own sequence of one context, then `gen`
/// greedy tokens for each, all sequences in every decode call. The prefix
/// that all prompts share is decoded once into sequence 0 and copied to
/// the others before their own tokens, so that the probe does no more
/// prefill than the daemon's prefix reuse (a whole-sequence copy, which
/// per-sequence KV streams allow too).
pub fn run(model: &Model, cfg: &ProbeConfig, prompts: &[Vec<LlamaToken>], gen: usize) -> Result<ProbeRun, String> {
    let b = prompts.len();
    if b == 0 || prompts.iter().any(Vec::is_empty) {
        return Err("the probe needs at least one non-empty prompt".into());
    }
    let mut ctx = new_context(model, context_params(cfg, b as u32)).map_err(|e| e.to_string())?;
    let n_batch = cfg.n_batch.max(b as u32) as usize;
    let mut batch = LlamaBatch::new(n_batch, 1);
    let mut out = ProbeRun {
        prompt_tokens: prompts.iter().map(Vec::len).sum(),
        ..ProbeRun::default()
    };

    // Prefill: every prompt token but the last of each sequence, in chunks
    // of n_batch, without logits; the last ones open the generation below
    // (one decode call with one token per sequence, logits for each).
    let t0 = Instant::now();
    let shortest = prompts.iter().map(Vec::len).min().unwrap_or(1);
    let shared = if b > 1 {
        (0..shortest - 1)
            .take_while(|&i| prompts.iter().all(|p| p[i] == prompts[0][i]))
            .count()
    } else {
        0
    };
    out.shared_prefix = shared;
    let prefix: Vec<(usize, usize)> = (0..shared).map(|i| (0, i)).collect();
    let rest: Vec<(usize, usize)> = prompts
        .iter()
        .enumerate()
        .flat_map(|(s, p)| (shared..p.len() - 1).map(move |i| (s, i)))
        .collect();
    prefill(&mut ctx, &mut batch, prompts, &prefix, n_batch, "prefix")?;
    if shared > 0 {
        for s in 1..b {
            ctx.copy_kv_cache_seq(0, s as i32, None, None)
                .map_err(|e| format!("copying the shared prefix: {e}"))?;
        }
    }
    prefill(&mut ctx, &mut batch, prompts, &rest, n_batch, "prefill")?;
    out.prefill_secs = t0.elapsed().as_secs_f64();

    // Generation: one token per sequence per decode call.
    let t1 = Instant::now();
    let mut next: Vec<LlamaToken> = prompts.iter().map(|p| p[p.len() - 1]).collect();
    let mut pos: Vec<usize> = prompts.iter().map(|p| p.len() - 1).collect();
    for step in 0..gen {
        batch.clear();
        for (s, &t) in next.iter().enumerate() {
            batch
                .add(t, pos[s] as i32, &[s as i32], true)
                .map_err(|e| e.to_string())?;
            pos[s] += 1;
        }
        ctx.decode(&mut batch)
            .map_err(|e| format!("decode at step {step}: {e}"))?;
        next = (0..b).map(|s| argmax(ctx.get_logits_ith(s as i32))).collect();
        out.generated += b;
    }
    out.gen_secs = t1.elapsed().as_secs_f64();
    Ok(out)
}

/// Decodes prompt tokens, given as (sequence, position) pairs, in chunks
/// of `n_batch`, without logits.
fn prefill(
    ctx: &mut llama_cpp_2::context::LlamaContext<'_>,
    batch: &mut LlamaBatch,
    prompts: &[Vec<LlamaToken>],
    items: &[(usize, usize)],
    n_batch: usize,
    what: &str,
) -> Result<(), String> {
    for chunk in items.chunks(n_batch) {
        batch.clear();
        for &(s, i) in chunk {
            batch
                .add(prompts[s][i], i as i32, &[s as i32], false)
                .map_err(|e| e.to_string())?;
        }
        ctx.decode(batch).map_err(|e| format!("{what} decode: {e}"))?;
    }
    Ok(())
}

fn argmax(logits: &[f32]) -> LlamaToken {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    LlamaToken::new(best as i32)
}

/// Times a short decode loop with flash attention on and off and returns
/// (chosen, gen tok/s on, gen tok/s off). It is kept short, since it runs
/// at every start: `seqs` (at most 4) sequences of an 8-token prompt, then
/// 8 tokens each, once per setting; only the generation is timed (prefill
/// is the same work either way and dominates a short run).
pub fn choose_flash_attn(model: &Model, base: &ProbeConfig, seqs: u32) -> Result<(bool, f64, f64), String> {
    let mut toks = model.tokenize("The lighthouse keeper wrote in his log every evening about the sea.");
    toks.truncate(8);
    let prompts = vec![toks; seqs.clamp(1, 4) as usize];
    let off = run(
        model,
        &ProbeConfig {
            flash_attn: false,
            ..*base
        },
        &prompts,
        16,
    )?
    .gen_tok_s();
    let on = run(
        model,
        &ProbeConfig {
            flash_attn: true,
            ..*base
        },
        &prompts,
        16,
    )?
    .gen_tok_s();
    Ok((on > off, on, off))
}
