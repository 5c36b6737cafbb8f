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
use crate::perjob::{embed_many, new_context, plan};
use crate::text::Generation;
use crate::{Observer, Output, Request, RunError, Runner};

type Reply = SyncSender<Result<Output, RunError>>;

/// Messages to the engine thread.
enum Msg {
    Job {
        req: Request,
        obs: Arc<dyn Observer>,
        reply: Reply,
    },
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
            Ok(Ok(())) => Ok(BatchedEngine {
                tx,
                thread: Mutex::new(Some(thread)),
            }),
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
        rx.recv()
            .map_err(|_| RunError::Engine("the batched engine stopped before finishing the job".into()))?
    }
}

/// One job, waiting or in the batch.
struct Seq {
    /// KV sequence id while admitted.
    slot: Option<i32>,
    /// Prompt tokens, then every generated token that goes back in.
    toks: Vec<LlamaToken>,
    n_prompt: usize,
    /// Positions of `toks` already in the KV cache.
    n_past: usize,
    /// Tokens of this sequence in the batch being decoded.
    fed: usize,
    /// Index of this sequence's logits in the current batch.
    i_batch: Option<i32>,
    gen: Generation,
    reused: usize,
    reply: Reply,
    started: Instant,
}

impl Seq {
    /// The prompt part (and generated part) still to be decoded.
    fn todo(&self) -> usize {
        self.toks.len() - self.n_past
    }
}

fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Cells kept free per running sequence when admitting another, so that
/// running jobs can grow for a while before anyone must be preempted.
const GROWTH_MARGIN: usize = 32;

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
    waiting: VecDeque<Seq>,
    /// Embedding jobs received since the last step, computed together.
    embeds: Vec<(String, Reply)>,
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
        embeds: Vec::new(),
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
        if !e.embeds.is_empty() {
            // Workers that claimed embedding jobs together send them within
            // a few milliseconds: give the stragglers a moment to join.
            if e.active.is_empty() {
                while let Ok(m) = rx.recv_timeout(std::time::Duration::from_millis(3)) {
                    quit |= e.take(m);
                }
            }
            e.run_embeds();
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
            Msg::Job {
                req: Request::Embed(text),
                obs: _,
                reply,
            } => {
                self.embeds.push((text, reply));
                false
            }
            Msg::Job {
                req: Request::Text(req),
                obs,
                reply,
            } => {
                let prepared = plan(self.model, self.n_ctx as u32, &req).and_then(|(toks, max_gen)| {
                    let sampler = req
                        .sampling
                        .chain(&self.model.llama, req.grammar.as_deref())
                        .map_err(RunError::Rejected)?;
                    Ok(Seq {
                        slot: None,
                        n_prompt: toks.len(),
                        toks,
                        n_past: 0,
                        fed: 0,
                        i_batch: None,
                        gen: Generation::new(sampler, max_gen, req.stop, obs),
                        reused: 0,
                        reply: reply.clone(),
                        started: Instant::now(),
                    })
                });
                match prepared {
                    Ok(s) => self.waiting.push_back(s),
                    Err(err) => {
                        let _ = reply.send(Err(err));
                    }
                }
                false
            }
        }
    }

    /// An upper bound of the cells in use (shared cells counted per sequence).
    fn cells_used(&self) -> usize {
        self.active.iter().map(|s| s.n_past + s.todo()).sum::<usize>() + self.cache.len()
    }

    /// Stops sequences whose observers ask for it (cancel, timeout, shutdown).
    fn check_stops(&mut self) {
        let mut i = 0;
        while i < self.active.len() {
            if let Some(reason) = self.active[i].gen.obs.should_stop() {
                let s = self.active.swap_remove(i);
                self.stop(s, reason);
            } else {
                i += 1;
            }
        }
        let mut kept = VecDeque::with_capacity(self.waiting.len());
        while let Some(s) = self.waiting.pop_front() {
            match s.gen.obs.should_stop() {
                Some(reason) => self.stop(s, reason),
                None => kept.push_back(s),
            }
        }
        self.waiting = kept;
    }

    fn stop(&mut self, s: Seq, reason: String) {
        let err = RunError::Stopped {
            reason,
            partial: s.gen.text.clone(),
            generated_tokens: s.gen.generated,
        };
        self.release(s, Err(err));
    }

    /// The best KV source for `toks`: (sequence id, usable prefix length),
    /// and whether a better prefix is still being computed.
    fn best_prefix(&self, toks: &[LlamaToken]) -> (Option<(i32, usize)>, bool) {
        let min_reuse = self.cfg.prefix_reuse_min as usize;
        if min_reuse == 0 {
            return (None, false);
        }
        let cap = toks.len() - 1; // the last token must be decoded for logits
        let mut best: Option<(i32, usize)> = None;
        let mut pending = false;
        let mut consider = |seq: i32, lcp: usize, in_kv: usize| {
            let usable = lcp.min(in_kv).min(cap);
            if lcp.min(cap) > usable && lcp.min(cap) >= min_reuse {
                pending = true;
            }
            if usable >= min_reuse && best.is_none_or(|(_, b)| usable > b) {
                best = Some((seq, usable));
            }
        };
        for s in &self.active {
            if let Some(slot) = s.slot {
                consider(slot, common_prefix(toks, &s.toks[..s.n_prompt]), s.n_past);
            }
        }
        consider(self.cache_seq, common_prefix(toks, &self.cache), self.cache.len());
        let pending = pending && best.is_none_or(|(_, b)| b < cap);
        (best, pending)
    }

    /// Moves waiting jobs into free slots while their cells fit.
    fn admit(&mut self) {
        let mut idx = 0;
        while idx < self.waiting.len() && !self.free_slots.is_empty() {
            let (mut best, pending) = self.best_prefix(&self.waiting[idx].toks);
            if pending && self.waiting[idx].n_past == 0 {
                // The shared part is still being computed by a running job: wait for it.
                idx += 1;
                continue;
            }
            let need = self.waiting[idx].toks.len() + GROWTH_MARGIN * (self.active.len() + 1);
            if self.cells_used() + need > self.n_ctx && !self.cache.is_empty() {
                self.drop_cache();
                best = best.filter(|(s, _)| *s != self.cache_seq);
            }
            if self.cells_used() + need > self.n_ctx && !self.active.is_empty() {
                break; // FIFO: wait for running jobs to free their cells
            }
            let mut s = self.waiting.remove(idx).expect("index checked");
            let slot = self.free_slots.pop().expect("checked non-empty");
            s.slot = Some(slot);
            s.n_past = 0;
            if let Some((src, n)) = best {
                let _ = self.ctx.kv_cache_seq_cp(src, slot, Some(0), Some(n as u32));
                s.n_past = n;
                s.reused = s.reused.max(n.min(s.n_prompt));
            }
            self.active.push(s);
        }
    }

    /// Computes every pending embedding in one decode call.
    fn run_embeds(&mut self) {
        let jobs = std::mem::take(&mut self.embeds);
        let texts: Vec<&str> = jobs.iter().map(|(t, _)| t.as_str()).collect();
        let results = embed_many(self.model, self.cfg.threads, &texts);
        if jobs.len() > 1 {
            tracing::debug!("computed {} embeddings in one batch", jobs.len());
        }
        for ((_, reply), r) in jobs.into_iter().zip(results) {
            let _ = reply.send(r);
        }
    }

    fn drop_cache(&mut self) {
        let _ = self.ctx.kv_cache_seq_rm(self.cache_seq, None, None);
        self.cache.clear();
    }

    /// Puts the most recently admitted sequence back in the queue (its KV is
    /// dropped; it resumes by re-decoding its prompt and what it generated).
    fn preempt_youngest(&mut self) -> bool {
        if self.active.len() < 2 {
            return false;
        }
        let youngest = (0..self.active.len())
            .max_by_key(|&i| self.active[i].started)
            .expect("non-empty");
        let mut s = self.active.swap_remove(youngest);
        if let Some(slot) = s.slot.take() {
            let _ = self.ctx.kv_cache_seq_rm(slot, None, None);
            self.free_slots.push(slot);
        }
        s.n_past = 0;
        tracing::debug!("KV cache full: preempted a sequence of {} tokens", s.toks.len());
        self.waiting.push_front(s);
        true
    }

    /// One decode call: the next token of every generating sequence, then
    /// prompt chunks up to the batch size.
    fn step(&mut self) {
        loop {
            let mut batch = LlamaBatch::new(self.n_batch, 1);
            // Generating sequences first (one token each), then prefills.
            let mut order: Vec<usize> = (0..self.active.len()).collect();
            order.sort_by_key(|&i| self.active[i].todo() > 1);
            let mut budget = self.n_batch;
            for i in order {
                let s = &mut self.active[i];
                s.fed = 0;
                s.i_batch = None;
                let slot = s.slot.expect("active sequences have a slot");
                let take = budget.min(s.todo());
                for p in s.n_past..s.n_past + take {
                    let is_last = p == s.toks.len() - 1;
                    if is_last {
                        s.i_batch = Some(batch.n_tokens());
                    }
                    let _ = batch.add(s.toks[p], p as i32, &[slot], is_last);
                }
                s.fed = take;
                budget -= take;
            }
            if batch.n_tokens() == 0 {
                return;
            }
            match self.ctx.decode(&mut batch) {
                Ok(()) => return self.after_decode(),
                Err(llama_cpp_2::DecodeError::NoKvCacheSlot) if !self.cache.is_empty() => self.drop_cache(),
                Err(llama_cpp_2::DecodeError::NoKvCacheSlot) if self.preempt_youngest() => {}
                Err(err) => {
                    tracing::error!(
                        "decode failed ({err}); failing the {} jobs in this batch",
                        self.active.len()
                    );
                    for s in std::mem::take(&mut self.active) {
                        self.release(s, Err(RunError::Engine(format!("llama.cpp decode failed: {err}"))));
                    }
                    return;
                }
            }
        }
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
            let t = s.gen.sampler.sample(&self.ctx, ib);
            if s.gen.push(model, t) {
                s.toks.push(t);
                i += 1;
            } else {
                let s = self.active.swap_remove(i);
                let out = Output {
                    prompt_tokens: s.n_prompt as u32,
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

    /// Frees a sequence's cells (keeping its prompt as the prefix cache when
    /// reuse is on) and answers its worker.
    fn release(&mut self, mut s: Seq, result: Result<Output, RunError>) {
        if let Some(slot) = s.slot.take() {
            let min_reuse = self.cfg.prefix_reuse_min as usize;
            let prompt_in_kv = s.n_past.min(s.n_prompt);
            if min_reuse > 0 && prompt_in_kv >= min_reuse && result.is_ok() {
                let fits = self.cells_used() - self.cache.len() + prompt_in_kv <= self.n_ctx;
                if fits && common_prefix(&self.cache, &s.toks[..prompt_in_kv]) < prompt_in_kv {
                    self.drop_cache();
                    let _ = self
                        .ctx
                        .kv_cache_seq_cp(slot, self.cache_seq, Some(0), Some(prompt_in_kv as u32));
                    self.cache = s.toks[..prompt_in_kv].to_vec();
                }
            }
            let _ = self.ctx.kv_cache_seq_rm(slot, None, None);
            self.free_slots.push(slot);
        }
        let result = result.map(|mut o| {
            o.text = std::mem::take(&mut s.gen.text);
            o
        });
        let _ = s.reply.send(result);
    }

    fn abort_all(&mut self, why: &str) {
        for (_, reply) in self.embeds.drain(..) {
            let _ = reply.send(Err(RunError::Stopped {
                reason: why.into(),
                partial: String::new(),
                generated_tokens: 0,
            }));
        }
        for s in std::mem::take(&mut self.active) {
            self.stop(s, why.into());
        }
        for s in std::mem::take(&mut self.waiting) {
            self.stop(s, why.into());
        }
    }
}
