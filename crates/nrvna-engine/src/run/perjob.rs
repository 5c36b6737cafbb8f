//! The one-context-per-job engine (the C++ design): each worker owns a
//! Runner that creates a fresh llama.cpp context for every job, so no state
//! carries between jobs. Kept as the fallback and the baseline for benchmarks.

use std::sync::Arc;
use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;

use crate::error::RunError;
use crate::job::{Observer, Output, Request, Runner, TextRequest, POLL_INTERVAL};
use crate::llama::{new_context, single_sequence};
use crate::plan::config::EngineConfig;
use crate::plan::prompt::{job_ctx, plan_text};
use crate::run::embed::embed_one;
use crate::run::generation::Generation;
use crate::run::parts::ModelParts;

/// A worker's runner: a fresh context per job.
pub struct PerJobRunner {
    model: Arc<dyn ModelParts>,
    cfg: EngineConfig,
    /// llama.cpp threads per context: the cores divided among the workers.
    threads: u32,
}

impl PerJobRunner {
    pub fn new(model: Arc<dyn ModelParts>, cfg: EngineConfig, workers: u32) -> PerJobRunner {
        let threads = (cfg.threads / workers.max(1)).max(1);
        PerJobRunner { model, cfg, threads }
    }
}

impl Runner for PerJobRunner {
    fn run(&mut self, req: Request, obs: Arc<dyn Observer>) -> Result<Output, RunError> {
        let model = &*self.model;
        match req {
            Request::Text(t) => run_text(model, &self.cfg, self.threads, t, obs),
            Request::Embed(s) => embed_one(model.weights(), self.threads, &s),
            Request::EmbedMedia { text, media } => model.embed_media(self.threads, &text, &media),
            Request::Speech(s) => model.speak(&self.cfg, self.threads, s, obs),
        }
    }
}

fn run_text(
    model: &dyn ModelParts,
    cfg: &EngineConfig,
    threads: u32,
    req: TextRequest,
    obs: Arc<dyn Observer>,
) -> Result<Output, RunError> {
    let weights = model.weights();
    let limit = weights.cap_ctx(cfg.max_ctx);
    let (toks, chunks, n_prompt, max_gen) = match &req.media {
        None => {
            let (toks, max_gen) = plan_text(weights, limit, &req.prompt, req.max_tokens)?;
            let n = toks.len() as u32;
            (toks, None, n, max_gen)
        }
        Some(m) => {
            let (chunks, n, max_gen) = model.plan_media(limit, &req, m)?;
            (Vec::new(), Some(chunks), n, max_gen)
        }
    };
    let n_ctx = job_ctx(n_prompt, max_gen, limit);
    let sampler = req
        .sampling
        .sampler(&weights.llama, req.grammar.as_deref())
        .map_err(|e| RunError::Rejected(e.to_string()))?;
    let (params, n_batch) = single_sequence(n_ctx, cfg.n_batch, cfg.flash_attn.policy(), threads);
    let mut ctx = new_context(&weights.llama, params)?;
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
            let proj = model.require_projector("a media job")?;
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
        if last_poll.elapsed() >= POLL_INTERVAL {
            obs.poll();
            last_poll = Instant::now();
        }
        if let Some(r) = obs.should_stop() {
            return Err(stopped(&gen, r));
        }
        let t = gen.sampler.sample(&ctx, idx);
        if !gen.push(&weights.llama, t) {
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
    toks: &[LlamaToken],
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
