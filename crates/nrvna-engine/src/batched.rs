//! The batched engine (the default): one llama.cpp context serves every
//! claimed job at once. Its thread packs each active sequence's next token,
//! plus prompt chunks of newly admitted jobs, into every decode call
//! (continuous batching): a job joins and leaves without waiting for others,
//! and a long prompt is prefilled in chunks so running jobs keep generating.
//!
//! Jobs whose prompts share a prefix (a chat template's preamble, a common
//! instruction) reuse its KV cells instead of recomputing them: the new
//! sequence is attached to the cells of an active sequence, or of the
//! prefix-cache sequence that keeps the last finished prompt.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;

use crate::config::EngineConfig;
use crate::model::Model;
use crate::perjob::{new_context, plan, run_embed};
use crate::text::Generation;
use crate::{Observer, Output, Request, RunError, Runner};

type Reply = SyncSender<Result<Output, RunError>>;

/// Messages to the engine thread.
enum Msg {
    Job { req: Request, obs: Arc<dyn Observer>, reply: Reply },
    Quit,
}

/// The engine thread and the way to reach it.
pub struct BatchedEngine {
    tx: Sender<Msg>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

/// A worker's handle on the shared engine.
pub struct BatchedRunner {
    tx: Sender<Msg>,
}

impl BatchedEngine {
    /// Starts the engine thread with room for `slots` concurrent sequences.
    /// The context is created before this returns, so errors surface here.
    pub fn start(model: Arc<Model>, cfg: EngineConfig, slots: u32) -> Result<BatchedEngine, String> {
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let thread = std::thread::Builder::new()
            .name("Engine".into())
            .spawn(move || engine_main(model, cfg, slots.max(1), rx, ready_tx))
            .map_err(|e| format!("starting the engine thread: {e}"))?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(BatchedEngine { tx, thread: Mutex::new(Some(thread)) }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("the engine thread died while starting".into()),
        }
    }

    pub fn runner(&self) -> BatchedRunner {
        BatchedRunner { tx: self.tx.clone() }
    }

    /// Stops the thread after it fails whatever it still holds.
    pub fn shutdown(&self) {
        let _ = self.tx.send(Msg::Quit);
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

impl Drop for BatchedEngine {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Runner for BatchedRunner {
    fn run(&mut self, req: Request, obs: Arc<dyn Observer>) -> Result<Output, RunError> {
        let (reply, rx) = mpsc::sync_channel(1);
        self.tx
            .send(Msg::Job { req, obs, reply })
            .map_err(|_| RunError::Engine("the batched engine has stopped".into()))?;
        rx.recv().map_err(|_| RunError::Engine("the batched engine stopped before finishing the job".into()))?
    }
}

#[derive(PartialEq)]
enum Phase {
    Prefill,
    Generate,
}

/// One job in the batch.
struct Seq {
    slot: i32,
    toks: Vec<LlamaToken>,
    /// Positions already in the KV cache.
    n_past: usize,
    /// Tokens of this sequence in the batch being decoded.
    fed: usize,
    phase: Phase,
    gen: Generation,
    last: LlamaToken,
    /// Index of this sequence's logits in the current batch.
    i_batch: Option<i32>,
    reserved: usize,
    reused: usize,
    reply: Reply,
    started: Instant,
}

/// A text job waiting for a slot.
struct Waiting {
    toks: Vec<LlamaToken>,
    max_gen: u32,
    gen: Generation,
    reply: Reply,
}

fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

struct Engine<'m> {
    model: &'m Model,
    cfg: EngineConfig,
    ctx: LlamaContext<'m>,
    n_ctx: usize,
    n_batch: usize,
    free_slots: Vec<i32>,
    cache_seq: i32,
    /// Tokens held by the prefix-cache sequence.
    cache: Vec<LlamaToken>,
    active: Vec<Seq>,
    waiting: VecDeque<Waiting>,
}

fn engine_main(
    model: Arc<Model>,
    cfg: EngineConfig,
    slots: u32,
    rx: Receiver<Msg>,
    ready: SyncSender<Result<(), String>>,
) {
    let n_ctx = model.cap_ctx(cfg.max_ctx);
    let n_batch = cfg.n_batch.min(n_ctx).max(slots);
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx))
        .with_n_batch(n_batch)
        .with_n_ubatch(n_batch)
        .with_n_seq_max(slots + 1)
        .with_kv_unified(true)
        .with_n_threads(cfg.threads as i32)
        .with_n_threads_batch(cfg.threads as i32);
    let ctx = match new_context(&model, params) {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    tracing::info!(
        "batched engine: {slots} slots, {n_ctx} shared KV cells, {n_batch} tokens per decode, {} threads",
        cfg.threads
    );
    let mut e = Engine {
        model: &model,
        cfg,
        ctx,
        n_ctx: n_ctx as usize,
        n_batch: n_batch as usize,
        free_slots: (0..slots as i32).rev().collect(),
        cache_seq: slots as i32,
        cache: Vec::new(),
        active: Vec::new(),
        waiting: VecDeque::new(),
    };
    let mut quit = false;
    while !quit {
        // Block only when there is nothing to do.
        if e.active.is_empty() && e.waiting.is_empty() {
            match rx.recv() {
                Ok(m) => quit |= e.take(m),
                Err(_) => break,
            }
        }
        loop {
            match rx.try_recv() {
                Ok(m) => quit |= e.take(m),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    quit = true;
                    break;
                }
            }
        }
        if quit {
            break;
        }
        e.check_stops();
        e.admit();
        if !e.active.is_empty() {
            e.step();
        }
    }
    e.abort_all("the daemon is shutting down");
}

impl<'m> Engine<'m> {
    /// Takes one message; returns true on Quit.
    fn take(&mut self, m: Msg) -> bool {
        match m {
            Msg::Quit => true,
            Msg::Job { req: Request::Embed(text), obs: _, reply } => {
                let _ = reply.send(self.embed(&text));
                false
            }
            Msg::Job { req: Request::Text(req), obs, reply } => {
                let prepared = plan(self.model, self.n_ctx as u32, &req).and_then(|(toks, max_gen)| {
                    let sampler =
                        req.sampling.chain(&self.model.llama, req.grammar.as_deref()).map_err(RunError::Rejected)?;
                    Ok(Waiting { toks, max_gen, gen: Generation::new(sampler, max_gen, req.stop, obs), reply: reply.clone() })
                });
                match prepared {
                    Ok(w) => self.waiting.push_back(w),
                    Err(err) => {
                        let _ = reply.send(Err(err));
                    }
                }
                false
            }
        }
    }

    fn reserved(&self) -> usize {
        self.active.iter().map(|s| s.reserved).sum::<usize>() + self.cache.len()
    }

    /// Stops sequences whose observers ask for it (cancel, timeout, shutdown).
    fn check_stops(&mut self) {
        let mut i = 0;
        while i < self.active.len() {
            if let Some(reason) = self.active[i].gen.obs.should_stop() {
                let s = self.active.swap_remove(i);
                let err = RunError::Stopped { reason, partial: s.gen.text.clone(), generated_tokens: s.gen.generated };
                self.release(s, Err(err));
            } else {
                i += 1;
            }
        }
        let mut kept = VecDeque::with_capacity(self.waiting.len());
        while let Some(w) = self.waiting.pop_front() {
            match w.gen.obs.should_stop() {
                Some(reason) => {
                    let _ = w.reply.send(Err(RunError::Stopped { reason, partial: String::new(), generated_tokens: 0 }));
                }
                None => kept.push_back(w),
            }
        }
        self.waiting = kept;
    }

    /// Moves waiting jobs into free slots while their KV reservation fits.
    fn admit(&mut self) {
        let min_reuse = self.cfg.prefix_reuse_min as usize;
        let mut idx = 0;
        while idx < self.waiting.len() && !self.free_slots.is_empty() {
            let w = &self.waiting[idx];
            let need = w.toks.len() + w.max_gen as usize;
            // Reuse: the longest prefix among active prompts and the cache.
            let mut best: Option<(i32, usize)> = None;
            let mut defer = false;
            if min_reuse > 0 {
                for s in &self.active {
                    let lcp = common_prefix(&w.toks, &s.toks);
                    if lcp >= min_reuse && s.phase == Phase::Prefill && s.n_past < lcp.min(w.toks.len() - 1) {
                        // The shared part is still being computed: wait for it.
                        defer = true;
                    }
                    let usable = lcp.min(s.n_past).min(w.toks.len() - 1);
                    if usable >= min_reuse && best.is_none_or(|(_, b)| usable > b) {
                        best = Some((s.slot, usable));
                    }
                }
                let lcp = common_prefix(&w.toks, &self.cache).min(w.toks.len() - 1);
                if lcp >= min_reuse && best.is_none_or(|(_, b)| lcp > b) {
                    best = Some((self.cache_seq, lcp));
                }
            }
            if defer && best.is_none_or(|(_, b)| b < w.toks.len() - 1) {
                idx += 1;
                continue;
            }
            if self.reserved() + need > self.n_ctx {
                let cache_useful = best.is_some_and(|(s, _)| s == self.cache_seq);
                if !self.cache.is_empty() && !cache_useful && self.reserved() - self.cache.len() + need <= self.n_ctx {
                    self.drop_cache();
                } else {
                    // FIFO: wait for running jobs to free their cells.
                    break;
                }
            }
            let w = self.waiting.remove(idx).expect("index checked");
            let slot = self.free_slots.pop().expect("checked non-empty");
            let mut n_past = 0;
            if let Some((src, n)) = best {
                let _ = self.ctx.kv_cache_seq_cp(src, slot, Some(0), Some(n as u32));
                n_past = n;
            }
            self.active.push(Seq {
                slot,
                toks: w.toks,
                n_past,
                fed: 0,
                phase: Phase::Prefill,
                gen: w.gen,
                last: LlamaToken(0),
                i_batch: None,
                reserved: need,
                reused: n_past,
                reply: w.reply,
                started: Instant::now(),
            });
        }
    }

    fn drop_cache(&mut self) {
        let _ = self.ctx.kv_cache_seq_rm(self.cache_seq, None, None);
        self.cache.clear();
    }

    /// One decode call: a token for every generating sequence, then prompt
    /// chunks up to the batch size.
    fn step(&mut self) {
        let mut batch = LlamaBatch::new(self.n_batch, 1);
        for s in self.active.iter_mut().filter(|s| s.phase == Phase::Generate) {
            s.i_batch = Some(batch.n_tokens());
            s.fed = 1;
            let _ = batch.add(s.last, s.n_past as i32, &[s.slot], true);
        }
        let mut budget = self.n_batch.saturating_sub(batch.n_tokens() as usize);
        for s in self.active.iter_mut().filter(|s| s.phase == Phase::Prefill) {
            s.fed = 0;
            s.i_batch = None;
            if budget == 0 {
                continue;
            }
            let take = budget.min(s.toks.len() - s.n_past);
            for p in s.n_past..s.n_past + take {
                let is_last = p == s.toks.len() - 1;
                if is_last {
                    s.i_batch = Some(batch.n_tokens());
                }
                let _ = batch.add(s.toks[p], p as i32, &[s.slot], is_last);
            }
            s.fed = take;
            budget -= take;
        }
        if batch.n_tokens() == 0 {
            return;
        }
        if let Err(err) = self.ctx.decode(&mut batch) {
            // Out of cells: give the prefix cache back and retry once.
            if !self.cache.is_empty() {
                self.drop_cache();
                if self.ctx.decode(&mut batch).is_ok() {
                    return self.after_decode();
                }
            }
            tracing::error!("decode failed ({err}); failing the {} jobs in this batch", self.active.len());
            let all = std::mem::take(&mut self.active);
            for s in all {
                self.release(s, Err(RunError::Engine(format!("llama.cpp decode failed: {err}"))));
            }
            return;
        }
        self.after_decode();
    }

    fn after_decode(&mut self) {
        let model = self.model;
        let mut i = 0;
        while i < self.active.len() {
            let s = &mut self.active[i];
            s.n_past += s.fed;
            s.fed = 0;
            let Some(ib) = s.i_batch.take() else {
                i += 1;
                continue;
            };
            s.phase = Phase::Generate;
            let t = s.gen.sampler.sample(&self.ctx, ib);
            if s.gen.push(model, t) {
                s.last = t;
                i += 1;
            } else {
                let s = self.active.swap_remove(i);
                let out = Output {
                    prompt_tokens: s.toks.len() as u32,
                    generated_tokens: s.gen.generated,
                    reused_tokens: s.reused as u32,
                    gen_secs: s.started.elapsed().as_secs_f64(),
                    finish: s.gen.finish,
                    text: String::new(),
                    embedding: None,
                };
                self.release(s, Ok(out));
            }
        }
    }

    /// Frees a sequence's cells (keeping its prompt as the prefix cache
    /// when reuse is on) and answers its worker.
    fn release(&mut self, mut s: Seq, result: Result<Output, RunError>) {
        let min_reuse = self.cfg.prefix_reuse_min as usize;
        let prompt_in_kv = s.n_past.min(s.toks.len());
        if min_reuse > 0 && prompt_in_kv >= min_reuse && result.is_ok() {
            let fits = self.reserved() - self.cache.len() + prompt_in_kv <= self.n_ctx;
            if fits && common_prefix(&self.cache, &s.toks[..prompt_in_kv]) < prompt_in_kv {
                self.drop_cache();
                let _ = self.ctx.kv_cache_seq_cp(s.slot, self.cache_seq, Some(0), Some(prompt_in_kv as u32));
                self.cache = s.toks[..prompt_in_kv].to_vec();
            }
        }
        let _ = self.ctx.kv_cache_seq_rm(s.slot, None, None);
        self.free_slots.push(s.slot);
        let result = result.map(|mut o| {
            o.text = std::mem::take(&mut s.gen.text);
            o
        });
        let _ = s.reply.send(result);
    }

    fn abort_all(&mut self, why: &str) {
        for s in std::mem::take(&mut self.active) {
            let err = RunError::Stopped { reason: why.into(), partial: s.gen.text.clone(), generated_tokens: s.gen.generated };
            self.release(s, Err(err));
        }
        for w in self.waiting.drain(..) {
            let _ = w.reply.send(Err(RunError::Stopped { reason: why.into(), partial: String::new(), generated_tokens: 0 }));
        }
    }

    /// Embeds one text in its own small context, which keeps the shared
    /// generation context free of embedding state.
    fn embed(&mut self, text: &str) -> Result<Output, RunError> {
        run_embed(self.model, self.cfg.threads, text)
    }
}
