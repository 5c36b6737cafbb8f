//! A minimal decode loop on llama.cpp with nothing around it: B sequences
//! prefilled, then N greedy tokens each, in one context (no files, no queue,
//! no sampler chains). It measures what the engine itself can do: the
//! benchmark's engine-bound probe runs it, and the daemon's flash-attention
//! choice at start (`NRVNA_FLASH_ATTN=auto`) times it on the actual backend.

use std::num::NonZeroU32;
use std::time::Instant;

use llama_cpp_2::context::kv_cache::KvCacheConversionError;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::session::LlamaStateSeqFlags;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::{BatchAddError, LlamaBatch};
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::{DecodeError, StateSeqError};

use super::cpu::{CpuSpan, MIN_CPU_SHARE};
use crate::error::EngineError;
use crate::llama::{new_context, Weights};

/// Why a probe run failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("the probe needs at least one non-empty prompt")]
    NoPrompt,
    #[error("the model's tokenizer returned no tokens")]
    NoTokens,
    #[error(transparent)]
    Context(#[from] EngineError),
    #[error("adding a token to the batch: {0}")]
    Batch(#[from] BatchAddError),
    /// `what`: the decode that failed ("prefill", "step 3").
    #[error("{what} decode: {source}")]
    Decode { what: String, source: DecodeError },
    #[error("copying the shared prefix: {0}")]
    CopyPrefix(#[from] KvCacheConversionError),
    #[error("reading sequence 0's KV data: {0}")]
    ReadState(StateSeqError),
    #[error("copying KV data into sequence {seq}: {source}")]
    WriteState { seq: usize, source: StateSeqError },
    /// Other processes held the CPUs while decode steps were timed, so the
    /// timings would be theirs as much as this model's.
    #[error(
        "the machine is busy: while decode steps were timed this process got {:.0}% of the CPU time of {threads} \
         threads (at least {:.0}% needed)",
        share * 100.0,
        min * 100.0
    )]
    Busy { share: f64, threads: u32, min: f64 },
}

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
pub fn run(
    model: &Weights,
    cfg: &ProbeConfig,
    prompts: &[Vec<LlamaToken>],
    gen: usize,
) -> Result<ProbeRun, ProbeError> {
    let b = prompts.len();
    if b == 0 || prompts.iter().any(Vec::is_empty) {
        return Err(ProbeError::NoPrompt);
    }
    let mut ctx = new_context(&model.llama, context_params(cfg, b as u32))?;
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
            ctx.copy_kv_cache_seq(0, s as i32, None, None)?;
        }
    }
    prefill(&mut ctx, &mut batch, prompts, &rest, n_batch, "prefill")?;
    out.prefill_secs = t0.elapsed().as_secs_f64();

    // Generation: one token per sequence per decode call.
    let t1 = Instant::now();
    let mut next: Vec<LlamaToken> = prompts.iter().map(|p| p[p.len() - 1]).collect();
    let mut pos: Vec<usize> = prompts.iter().map(|p| p.len() - 1).collect();
    for step in 0..gen {
        decode_step(&mut ctx, &mut batch, &mut next, &mut pos, step)?;
        out.generated += b;
    }
    out.gen_secs = t1.elapsed().as_secs_f64();
    Ok(out)
}

/// One decode call with token `next[s]` at position `pos[s]` for every
/// sequence s; then `next` holds each sequence's greedy pick and `pos` has
/// moved on. Reading the logits waits for the decode on any backend (on a
/// GPU, decode returns before the work is done).
fn decode_step(
    ctx: &mut LlamaContext<'_>,
    batch: &mut LlamaBatch,
    next: &mut [LlamaToken],
    pos: &mut [usize],
    step: usize,
) -> Result<(), ProbeError> {
    batch.clear();
    for (s, (&t, p)) in next.iter().zip(pos.iter_mut()).enumerate() {
        batch.add(t, *p as i32, &[s as i32], true)?;
        *p += 1;
    }
    ctx.decode(batch).map_err(|source| ProbeError::Decode {
        what: format!("step {step}"),
        source,
    })?;
    for (s, t) in next.iter_mut().enumerate() {
        *t = argmax(ctx.get_logits_ith(s as i32));
    }
    Ok(())
}

/// Decodes prompt tokens, given as (sequence, position) pairs, in chunks
/// of `n_batch`, without logits.
fn prefill(
    ctx: &mut LlamaContext<'_>,
    batch: &mut LlamaBatch,
    prompts: &[Vec<LlamaToken>],
    items: &[(usize, usize)],
    n_batch: usize,
    what: &str,
) -> Result<(), ProbeError> {
    for chunk in items.chunks(n_batch) {
        batch.clear();
        for &(s, i) in chunk {
            batch.add(prompts[s][i], i as i32, &[s as i32], false)?;
        }
        ctx.decode(batch).map_err(|source| ProbeError::Decode {
            what: what.to_owned(),
            source,
        })?;
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

/// KV cells each sequence holds before [`choose_flash_attn`] times decodes.
pub const CHOICE_CELLS_PER_SEQ: usize = 64;
/// Decode steps timed per setting in that measurement.
pub const CHOICE_STEPS: usize = 7;
/// The most sequences that measurement decodes together.
pub const CHOICE_MAX_SEQS: u32 = 16;

/// Times decode steps with flash attention on and off and returns
/// (chosen, tok/s on, tok/s off). The choice depends on how many KV cells
/// each decode attends to, so the measurement is shaped like the engine's
/// work: `seqs` sequences (at most 16), each holding 64 cells of its own,
/// one token each per decode. A probe of 4 sequences and a few cells
/// chose flash attention off, while 16 sequences with their prompts ran
/// 1.34x faster with it (`scripts/bench.sh`, issue #11).
///
/// It runs at every start, so it is kept short: one sequence's 64 tokens
/// are prefilled, and their KV data is copied into the other sequences
/// (each copy takes cells of its own, as a different job's prompt would,
/// where a `seq_cp` would share the same cells). Each setting then times
/// 7 decode steps and keeps the median, so one step slowed by another
/// process does not decide. `cpu_bound`: the model runs on the CPU, and
/// the measurement stops with [`ProbeError::Busy`] when other processes
/// hold the CPUs (give false when layers run on a GPU, where the CPU
/// waits).
pub fn choose_flash_attn(
    model: &Weights,
    base: &ProbeConfig,
    seqs: u32,
    cpu_bound: bool,
) -> Result<(bool, f64, f64), ProbeError> {
    let seqs = seqs.clamp(1, CHOICE_MAX_SEQS) as usize;
    let prompt = measuring_prompt(model, CHOICE_CELLS_PER_SEQ)?;
    let cells = seqs * (CHOICE_CELLS_PER_SEQ + CHOICE_STEPS);
    let cfg = ProbeConfig {
        // Room for every sequence, in whole 256-cell pages.
        n_ctx: base.n_ctx.max(cells.div_ceil(256) as u32 * 256),
        ..*base
    };
    let measure = |flash_attn| {
        median_step_tok_s(
            model,
            &ProbeConfig { flash_attn, ..cfg },
            seqs,
            &prompt,
            CHOICE_STEPS,
            cpu_bound,
        )
    };
    let off = measure(false)?;
    let on = measure(true)?;
    Ok((on > off, on, off))
}

/// The text the start-up measurements decode, repeated to `n` tokens.
fn measuring_prompt(model: &Weights, n: usize) -> Result<Vec<LlamaToken>, ProbeError> {
    let text = "The lighthouse keeper wrote in his log every evening about the sea, the ships \
                that passed the point, the weather that came in from the west, and the birds \
                that rested on the rail of the gallery before they flew on to the south.";
    let mut prompt = model.tokenize(text);
    if prompt.is_empty() {
        return Err(ProbeError::NoTokens);
    }
    while prompt.len() < n {
        prompt.extend_from_within(..);
    }
    prompt.truncate(n);
    Ok(prompt)
}

/// KV cells each sequence holds while batch sizes are timed: a chat job's
/// prompt and the first part of its answer. Attention over one shared KV
/// stream costs in proportion to every sequence's cells, so timing with
/// fewer cells than real jobs hold would favour batches too large.
pub const SLOTS_CELLS_PER_SEQ: usize = 128;
/// Decode steps timed per batch size by [`measure_slots`] (the median counts).
pub const SLOTS_STEPS: usize = 3;
/// Batch sizes tried by [`measure_slots`], smallest first.
pub const SLOTS_CANDIDATES: [u32; 5] = [4, 8, 16, 32, 64];

/// Times one decode step at each candidate batch size up to `max_slots`
/// (the smallest is always tried), each sequence holding
/// [`SLOTS_CELLS_PER_SEQ`] cells, in one shared KV stream or a stream per
/// sequence as `base` says, and returns (size, tok/s) pairs,
/// smallest first. It stops once a size gains less than 10% over the one
/// before: the pick is the smallest within 5% of the best, and past that
/// point larger batches only add latency (on a CPU with one shared stream,
/// they get slower). Each size times [`SLOTS_STEPS`] steps, to keep the
/// start short. `cpu_bound` as for [`choose_flash_attn`].
pub fn measure_slots(
    model: &Weights,
    base: &ProbeConfig,
    max_slots: u32,
    cpu_bound: bool,
) -> Result<Vec<(u32, f64)>, ProbeError> {
    let prompt = measuring_prompt(model, SLOTS_CELLS_PER_SEQ)?;
    let mut out: Vec<(u32, f64)> = Vec::new();
    for b in SLOTS_CANDIDATES {
        if !out.is_empty() && b > max_slots {
            break;
        }
        let cells = b as usize * (SLOTS_CELLS_PER_SEQ + SLOTS_STEPS);
        // A stream per sequence gets an equal share, padded to 256 cells.
        let cells = if base.kv_unified {
            cells
        } else {
            b as usize * (SLOTS_CELLS_PER_SEQ + SLOTS_STEPS).div_ceil(256) * 256
        };
        let cfg = ProbeConfig {
            n_ctx: base.n_ctx.max(cells.div_ceil(256) as u32 * 256),
            n_batch: base.n_batch.max(b),
            ..*base
        };
        let tok_s = median_step_tok_s(model, &cfg, b as usize, &prompt, SLOTS_STEPS, cpu_bound)?;
        let before = out.last().map(|x| x.1);
        out.push((b, tok_s));
        if before.is_some_and(|p| tok_s < 1.1 * p) {
            break;
        }
    }
    Ok(out)
}

/// The batch size to run: the smallest measured one within 5% of the
/// best tok/s (more sequences in flight than that buy no throughput and
/// cost every job latency).
pub fn pick_slots(measured: &[(u32, f64)]) -> Option<u32> {
    let best = measured.iter().map(|x| x.1).fold(f64::NAN, f64::max);
    measured.iter().find(|x| x.1 >= 0.95 * best).map(|x| x.0)
}

/// Fills `seqs` sequences with `prompt` (prefilled once, copied to the
/// others), then decodes one token per sequence `steps` times;
/// returns tokens per second of the median step. `cpu_bound`: after
/// each step, stops with [`ProbeError::Busy`] once the steps so far got
/// less than [`MIN_CPU_SHARE`] of the CPU time the context's threads
/// would use (the prompt is not judged: it may wait for the weights to
/// come in from disk).
fn median_step_tok_s(
    model: &Weights,
    cfg: &ProbeConfig,
    seqs: usize,
    prompt: &[LlamaToken],
    steps_n: usize,
    cpu_bound: bool,
) -> Result<f64, ProbeError> {
    let mut ctx = new_context(&model.llama, context_params(cfg, seqs as u32))?;
    let n_batch = cfg.n_batch.max(seqs as u32) as usize;
    let mut batch = LlamaBatch::new(n_batch, 1);
    let last = prompt.len() - 1;
    let items: Vec<(usize, usize)> = (0..last).map(|i| (0, i)).collect();
    prefill(&mut ctx, &mut batch, &[prompt.to_vec()], &items, n_batch, "prefill")?;
    if seqs > 1 {
        let state = ctx
            .state_seq_get(0, LlamaStateSeqFlags::empty())
            .map_err(ProbeError::ReadState)?;
        for seq in 1..seqs {
            ctx.state_seq_set(&state, seq as i32)
                .map_err(|source| ProbeError::WriteState { seq, source })?;
        }
    }
    let mut next = vec![prompt[last]; seqs];
    let mut pos = vec![last; seqs];
    let mut steps = Vec::with_capacity(steps_n);
    let span = CpuSpan::start(cfg.threads);
    for step in 0..steps_n {
        let t = Instant::now();
        decode_step(&mut ctx, &mut batch, &mut next, &mut pos, step)?;
        steps.push(t.elapsed().as_secs_f64());
        let share = span.share();
        // NaN (getrusage failed) does not stop it.
        if cpu_bound && share < MIN_CPU_SHARE {
            return Err(ProbeError::Busy {
                share,
                threads: span.threads(),
                min: MIN_CPU_SHARE,
            });
        }
    }
    let share = span.share();
    steps.sort_by(f64::total_cmp);
    let median = steps[steps.len() / 2];
    tracing::debug!(
        "probe: {seqs} sequences {}, flash attention {}: median step {:.1} ms, {:.0}% of the threads' CPU time",
        if cfg.kv_unified {
            "sharing one KV stream"
        } else {
            "with a KV stream per sequence"
        },
        if cfg.flash_attn { "on" } else { "off" },
        median * 1e3,
        share * 100.0
    );
    Ok(seqs as f64 / median.max(1e-9))
}

#[cfg(test)]
mod tests {
    use super::pick_slots;

    #[test]
    fn the_smallest_batch_within_five_percent_of_the_best_is_picked() {
        assert_eq!(
            pick_slots(&[(4, 100.0), (8, 180.0), (16, 240.0), (32, 250.0)]),
            Some(16)
        );
        assert_eq!(
            pick_slots(&[(4, 100.0), (8, 180.0), (16, 200.0), (32, 150.0)]),
            Some(16)
        );
        assert_eq!(pick_slots(&[(4, 300.0), (8, 200.0)]), Some(4));
        assert_eq!(pick_slots(&[]), None);
    }
}
