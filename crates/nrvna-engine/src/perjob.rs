//! The one-context-per-job engine (the C++ design): each worker owns a
//! Runner that creates a fresh llama.cpp context for every job, so no state
//! carries between jobs. Kept as the fallback and the baseline for benchmarks.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;

use crate::config::EngineConfig;
use crate::embed::{normalize, pooling_for};
use crate::media::Media;
use crate::model::{backend, Model, CONTEXT_LOCK};
use crate::text::Generation;
use crate::{MediaInput, Observer, Output, Request, RunError, Runner, TextRequest};
use llama_cpp_2::mtmd::MtmdInputChunks;

/// A worker's runner: a fresh context per job.
pub struct PerJobRunner {
    model: Arc<Model>,
    cfg: EngineConfig,
    /// llama.cpp threads per context: the cores divided among the workers.
    threads: u32,
}

impl PerJobRunner {
    pub fn new(model: Arc<Model>, cfg: EngineConfig, workers: u32) -> PerJobRunner {
        let threads = (cfg.threads / workers.max(1)).max(1);
        PerJobRunner { model, cfg, threads }
    }
}

impl Runner for PerJobRunner {
    fn run(&mut self, req: Request, obs: Arc<dyn Observer>) -> Result<Output, RunError> {
        match req {
            Request::Text(t) => run_text(&self.model, &self.cfg, self.threads, t, obs),
            Request::Embed(s) => run_embed(&self.model, self.threads, &s),
            Request::EmbedMedia { text, media } => embed_media(&self.model, self.threads, &text, &media),
            Request::Speech(s) => crate::tts::speak(&self.model, &self.cfg, self.threads, s, obs),
        }
    }
}

pub(crate) fn new_context(model: &Model, params: LlamaContextParams) -> Result<LlamaContext<'_>, RunError> {
    let backend = backend().map_err(RunError::Fault)?;
    let _g = CONTEXT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    model.llama.new_context(backend, params).map_err(|e| {
        RunError::Fault(format!(
            "creating a llama.cpp context: {e} (lower NRVNA_MAX_CTX if memory is short)"
        ))
    })
}

/// A context of `n_ctx` cells for one sequence, and its decode batch size.
pub(crate) fn single_sequence(cfg: &EngineConfig, n_ctx: u32, threads: u32) -> (LlamaContextParams, u32) {
    let n_batch = cfg.n_batch.min(n_ctx).max(1);
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx))
        .with_n_batch(n_batch)
        .with_n_ubatch(n_batch)
        .with_n_seq_max(1)
        .with_flash_attention_policy(cfg.flash_attn.policy())
        .with_n_threads(threads as i32)
        .with_n_threads_batch(threads as i32);
    (params, n_batch)
}

/// Checks the prompt against the context and returns (prompt tokens, max new tokens).
pub(crate) fn plan(
    model: &Model,
    limit: u32,
    req: &TextRequest,
) -> Result<(Vec<llama_cpp_2::token::LlamaToken>, u32), RunError> {
    let toks = model.tokenize(&req.prompt);
    let n = toks.len() as u32;
    if n == 0 {
        return Err(RunError::Rejected("the prompt renders to zero tokens".into()));
    }
    if n >= limit {
        return Err(RunError::Rejected(format!(
            "the prompt is {n} tokens but the context holds {limit} (NRVNA_MAX_CTX, capped by the model); shorten the prompt or raise NRVNA_MAX_CTX"
        )));
    }
    Ok((toks, req.max_tokens.max(1).min(limit - n)))
}

/// A media job's prompt: its chunks (text tokens, images or audio), the KV
/// cells they take, and the most new tokens that fit after them.
pub(crate) fn plan_media(
    model: &Model,
    limit: u32,
    req: &TextRequest,
    media: &MediaInput,
) -> Result<(MtmdInputChunks, u32, u32), RunError> {
    let what = if media.audio {
        "a speech-to-text job"
    } else {
        "a vision job"
    };
    let chunks = model
        .projector(what)?
        .tokenize(&req.prompt, &media.files, media.audio)?;
    let n = chunks.total_tokens().max(chunks.total_positions().max(0) as usize) as u32;
    if n >= limit {
        return Err(RunError::Rejected(format!(
            "the prompt with its media is {n} tokens but the context holds {limit} (NRVNA_MAX_CTX, capped by the model); use fewer or smaller files, or raise NRVNA_MAX_CTX"
        )));
    }
    Ok((chunks, n, req.max_tokens.max(1).min(limit - n)))
}

fn run_text(
    model: &Model,
    cfg: &EngineConfig,
    threads: u32,
    req: TextRequest,
    obs: Arc<dyn Observer>,
) -> Result<Output, RunError> {
    let limit = model.cap_ctx(cfg.max_ctx);
    let (toks, chunks, n_prompt, max_gen) = match &req.media {
        None => {
            let (toks, max_gen) = plan(model, limit, &req)?;
            let n = toks.len() as u32;
            (toks, None, n, max_gen)
        }
        Some(m) => {
            let (chunks, n, max_gen) = plan_media(model, limit, &req, m)?;
            (Vec::new(), Some(chunks), n, max_gen)
        }
    };
    let n_ctx = (n_prompt + max_gen).div_ceil(64) * 64;
    let n_ctx = n_ctx.min(limit.div_ceil(64) * 64);
    let sampler = req
        .sampling
        .sampler(&model.llama, req.grammar.as_deref())
        .map_err(RunError::Rejected)?;
    let (params, n_batch) = single_sequence(cfg, n_ctx, threads);
    let mut ctx = new_context(model, params)?;
    let mut gen = Generation::new(sampler, max_gen, req.stop, obs.clone());
    let start = Instant::now();
    let stopped = |gen: &Generation, reason: String| RunError::Stopped {
        reason,
        partial: gen.text.clone(),
        generated_tokens: gen.generated,
    };

    let mut batch = LlamaBatch::new(n_batch as usize, 1);
    let (mut n_past, mut idx) = match &chunks {
        Some(chunks) => {
            obs.poll();
            if let Some(r) = obs.should_stop() {
                return Err(stopped(&gen, r));
            }
            let proj = model.projector("a media job")?;
            let n = proj.eval(chunks, &mut ctx, 0, 0, n_batch as i32)?;
            (n as u32, -1)
        }
        None => {
            decode_prompt(&toks, &mut ctx, &mut batch, n_batch, &obs).map_err(|e| match e {
                PromptStop::Stop(r) => stopped(&gen, r),
                PromptStop::Err(e) => e,
            })?;
            (n_prompt, batch.n_tokens() - 1)
        }
    };
    drop(chunks);
    let mut last_poll = Instant::now();
    loop {
        if last_poll.elapsed() >= crate::POLL_INTERVAL {
            obs.poll();
            last_poll = Instant::now();
        }
        if let Some(r) = obs.should_stop() {
            return Err(stopped(&gen, r));
        }
        let t = gen.sampler.sample(&ctx, idx);
        if !gen.push(model, t) {
            break;
        }
        if n_past >= n_ctx {
            gen.end_for_length();
            break;
        }
        batch.clear();
        batch
            .add(t, n_past as i32, &[0], true)
            .map_err(|e| RunError::Fault(e.to_string()))?;
        ctx.decode(&mut batch)
            .map_err(|e| RunError::from_decode(e, true, "generating"))?;
        n_past += 1;
        idx = 0;
    }
    Ok(Output {
        text: gen.text,
        embedding: None,
        audio: None,
        prompt_tokens: n_prompt,
        generated_tokens: gen.generated,
        reused_tokens: 0,
        gen_secs: start.elapsed().as_secs_f64(),
        finish: gen.finish,
    })
}

enum PromptStop {
    Stop(String),
    Err(RunError),
}

/// Decodes a text prompt into sequence 0 in chunks of `n_batch`, logits
/// for the last token, checking the observer between chunks.
fn decode_prompt(
    toks: &[llama_cpp_2::token::LlamaToken],
    ctx: &mut LlamaContext<'_>,
    batch: &mut LlamaBatch,
    n_batch: u32,
    obs: &Arc<dyn Observer>,
) -> Result<(), PromptStop> {
    let last = toks.len() - 1;
    for (c, chunk) in toks.chunks(n_batch as usize).enumerate() {
        obs.poll();
        if let Some(r) = obs.should_stop() {
            return Err(PromptStop::Stop(r));
        }
        batch.clear();
        for (j, t) in chunk.iter().enumerate() {
            let pos = c * n_batch as usize + j;
            batch
                .add(*t, pos as i32, &[0], pos == last)
                .map_err(|e| PromptStop::Err(RunError::Fault(e.to_string())))?;
        }
        ctx.decode(batch)
            .map_err(|e| PromptStop::Err(RunError::from_decode(e, true, "decoding the prompt")))?;
    }
    Ok(())
}

/// Embeds text and images together in their own context (the images
/// encoded by the projector, the text after them attending to them).
/// Pooled over the last decode call of the prompt, as the C++ daemon does.
pub(crate) fn embed_media(model: &Model, threads: u32, text: &str, media: &[Media]) -> Result<Output, RunError> {
    let start = Instant::now();
    let proj = model.projector("an embedding with images")?;
    let prompt = crate::media::with_markers(text, media.len());
    let chunks = proj.tokenize(&prompt, media, false)?;
    let n = chunks.total_tokens().max(chunks.total_positions().max(0) as usize) as u32;
    let limit = model.cap_ctx(8192);
    if n > limit {
        return Err(RunError::Rejected(format!(
            "the text with its images is {n} tokens; embeddings take at most {limit}"
        )));
    }
    let n_ctx = n.div_ceil(64) * 64;
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx))
        .with_n_batch(n_ctx)
        .with_n_ubatch(n_ctx)
        .with_n_seq_max(1)
        .with_embeddings(true)
        .with_pooling_type(pooling_for(&model.llama))
        .with_n_threads(threads as i32)
        .with_n_threads_batch(threads as i32);
    let mut ctx = new_context(model, params)?;
    proj.eval(&chunks, &mut ctx, 0, 0, n_ctx as i32)?;
    let v = ctx
        .embeddings_seq_ith(0)
        .map_err(|e| RunError::Fault(format!("reading the embedding: {e}")))?;
    let v = normalize(v).map_err(RunError::Rejected)?;
    Ok(Output {
        embedding: Some(v),
        prompt_tokens: n,
        gen_secs: start.elapsed().as_secs_f64(),
        ..Output::default()
    })
}

/// Embeds one text in its own context.
pub(crate) fn run_embed(model: &Model, threads: u32, text: &str) -> Result<Output, RunError> {
    embed_many(model, threads, &[text])
        .pop()
        .unwrap_or_else(|| Err(RunError::Fault("no embedding came back".into())))
}

/// Embeds several texts with one decode call (one sequence each): the way
/// the batched engine serves embedding jobs claimed together.
pub(crate) fn embed_many(model: &Model, threads: u32, texts: &[&str]) -> Vec<Result<Output, RunError>> {
    let limit = model.cap_ctx(8192) as usize;
    let mut results: Vec<Option<Result<Output, RunError>>> = Vec::with_capacity(texts.len());
    let mut batchable: Vec<(usize, Vec<llama_cpp_2::token::LlamaToken>)> = Vec::new();
    for (i, t) in texts.iter().enumerate() {
        let toks = model.tokenize_plain(t);
        if toks.is_empty() {
            results.push(Some(Err(RunError::Rejected(
                "the text to embed is empty after tokenization".into(),
            ))));
        } else if toks.len() > limit {
            results.push(Some(Err(RunError::Rejected(format!(
                "the text is {} tokens; embeddings take at most {limit}",
                toks.len()
            )))));
        } else {
            results.push(None);
            batchable.push((i, toks));
        }
    }
    // Group into decode calls that fit the embedding context.
    let start = Instant::now();
    let mut group: Vec<(usize, Vec<llama_cpp_2::token::LlamaToken>)> = Vec::new();
    let mut groups = Vec::new();
    let mut total = 0;
    for item in batchable {
        if total + item.1.len() > limit && !group.is_empty() {
            groups.push(std::mem::take(&mut group));
            total = 0;
        }
        total += item.1.len();
        group.push(item);
    }
    if !group.is_empty() {
        groups.push(group);
    }
    for g in groups {
        for (i, r) in embed_group(model, threads, &g, start) {
            results[i] = Some(r);
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(RunError::Fault("embedding skipped".into()))))
        .collect()
}

fn embed_group(
    model: &Model,
    threads: u32,
    group: &[(usize, Vec<llama_cpp_2::token::LlamaToken>)],
    start: Instant,
) -> Vec<(usize, Result<Output, RunError>)> {
    let fail = |e: RunError| {
        let why = e.to_string();
        group
            .iter()
            .map(|(i, _)| {
                let err = match &e {
                    RunError::Rejected(_) => RunError::Rejected(why.clone()),
                    _ => RunError::Fault(why.clone()),
                };
                (*i, Err(err))
            })
            .collect()
    };
    let n: usize = group.iter().map(|(_, t)| t.len()).sum();
    // llama.cpp reserves the pooling graph with n_ubatch split evenly across
    // the sequences; a size that is not a multiple of their count trips an
    // assertion, so round to a multiple of it.
    let k = group.len() as u32;
    let n_ctx = ((n as u32).div_ceil(64) * 64).div_ceil(k) * k;
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx))
        .with_n_batch(n_ctx)
        .with_n_ubatch(n_ctx)
        .with_n_seq_max(group.len() as u32)
        .with_kv_unified(true)
        .with_embeddings(true)
        .with_pooling_type(pooling_for(&model.llama))
        .with_n_threads(threads as i32)
        .with_n_threads_batch(threads as i32);
    let mut ctx = match new_context(model, params) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let mut batch = LlamaBatch::new(n, group.len() as i32);
    for (seq, (_, toks)) in group.iter().enumerate() {
        // Pooling reads every token's output.
        if let Err(e) = batch.add_sequence(toks, seq as i32, true) {
            return fail(RunError::Fault(e.to_string()));
        }
    }
    if let Err(e) = ctx.decode(&mut batch) {
        return fail(RunError::from_decode(e, group.len() == 1, "decoding for embedding"));
    }
    group
        .iter()
        .enumerate()
        .map(|(seq, (i, toks))| {
            let r = ctx
                .embeddings_seq_ith(seq as i32)
                .map_err(|e| RunError::Fault(format!("reading the embedding: {e}")))
                .and_then(|v| normalize(v).map_err(RunError::Rejected))
                .map(|v| Output {
                    embedding: Some(v),
                    prompt_tokens: toks.len() as u32,
                    gen_secs: start.elapsed().as_secs_f64(),
                    ..Output::default()
                });
            (*i, r)
        })
        .collect()
}
