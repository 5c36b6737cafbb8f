//! The batched engine (the default): one llama.cpp context serves every
//! claimed job at once. Its thread packs each active sequence's next token,
//! plus prompt chunks of newly admitted jobs, into every decode call
//! (continuous batching): a job joins and leaves without waiting for others,
//! and a long prompt is prefilled in chunks so running jobs keep generating.
//!
//! Jobs whose prompts share a prefix (a chat template's preamble, a common
//! instruction) reuse its KV cells instead of recomputing them: the new
//! sequence is attached to the cells of an active sequence, or of the
//! prefix-cache sequence that keeps the last finished prompt. The decisions
//! (admission, prefix matching, preemption, cell accounting) live in
//! [`crate::run::sched`]; this file applies them to the llama.cpp context.
//!
//! Faults: a decode that fails for a reason no single job's input explains
//! ends the engine thread; every job it held gets [`RunError::Fault`], and
//! so does every later request. A decode refused as invalid input while
//! several jobs shared the batch is retried one job at a time, so that only
//! the job whose input it was fails.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::mtmd::MtmdInputChunks;
use llama_cpp_2::token::LlamaToken;

use crate::error::{EngineError, RunError};
use crate::job::{EngineStats, Observer, Output, Request, Runner, TextRequest, POLL_INTERVAL};
use crate::llama::new_context;
use crate::plan::config::EngineConfig;
use crate::plan::prompt::plan_text;
use crate::run::cpu::{process_cpu_secs, CpuWatch};
use crate::run::embed::embed_many;
use crate::run::generation::Generation;
use crate::run::parts::ModelParts;
use crate::run::sched::{Sched, SeqState};

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
    /// For speech jobs, which run on the worker's thread in a context of
    /// their own (their tokens follow the OuteTTS layout, not the batch).
    model: Arc<dyn ModelParts>,
    cfg: EngineConfig,
    slots: u32,
    /// Batch sizes and KV cells, for the daemon's metrics.
    stats: Arc<EngineStats>,
}

/// A worker's handle on the shared engine.
pub struct BatchedRunner {
    tx: Sender<Msg>,
    model: Arc<dyn ModelParts>,
    cfg: EngineConfig,
    /// llama.cpp threads for a speech job's own context.
    speech_threads: u32,
}

impl BatchedEngine {
    /// Starts the engine thread with room for `slots` concurrent sequences.
    /// The context is created before this returns, so errors surface here.
    pub fn start(model: Arc<dyn ModelParts>, cfg: EngineConfig, slots: u32) -> Result<BatchedEngine, EngineError> {
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let (m, c) = (model.clone(), cfg.clone());
        let stats = Arc::new(EngineStats::default());
        let st = stats.clone();
        let thread = std::thread::Builder::new()
            .name("Engine".into())
            .spawn(move || engine_main(m, c, slots.max(1), rx, ready_tx, st))
            .map_err(|source| EngineError::EngineThread { source })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(BatchedEngine {
                tx,
                thread: Mutex::new(Some(thread)),
                model,
                cfg,
                slots: slots.max(1),
                stats,
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(EngineError::EngineThreadDied),
        }
    }

    /// The engine's running figures (batch sizes, KV cells in use).
    pub fn stats(&self) -> Arc<EngineStats> {
        self.stats.clone()
    }

    pub fn runner(&self) -> BatchedRunner {
        BatchedRunner {
            tx: self.tx.clone(),
            model: self.model.clone(),
            cfg: self.cfg.clone(),
            speech_threads: (self.cfg.threads / self.slots).max(1),
        }
    }

    /// Asks the thread to stop (jobs it holds end as stopped) and waits at
    /// most `within` for it; false if it is still running (stuck in a
    /// decode), in which case it is left to the process's exit.
    pub fn shutdown_within(&self, within: std::time::Duration) -> bool {
        let _ = self.tx.send(Msg::Quit);
        let mut slot = self.thread.lock().unwrap_or_else(|e| e.into_inner());
        let Some(t) = slot.take() else {
            return true;
        };
        let deadline = Instant::now() + within;
        while !t.is_finished() {
            if Instant::now() >= deadline {
                *slot = Some(t);
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let _ = t.join();
        true
    }
}

impl Drop for BatchedEngine {
    fn drop(&mut self) {
        let _ = self.shutdown_within(std::time::Duration::from_secs(5));
    }
}

impl Runner for BatchedRunner {
    /// Hands the job to the engine thread and waits for it, calling the
    /// observer's `poll` on this (the worker's) thread meanwhile.
    fn run(&mut self, req: Request, obs: Arc<dyn Observer>) -> Result<Output, RunError> {
        if let Request::Speech(s) = req {
            return self.model.speak(&self.cfg, self.speech_threads, s, obs);
        }
        let (reply, rx) = mpsc::sync_channel(1);
        self.tx
            .send(Msg::Job {
                req,
                obs: obs.clone(),
                reply,
            })
            .map_err(|_| RunError::Fault("the batched engine has stopped".into()))?;
        loop {
            match rx.recv_timeout(POLL_INTERVAL) {
                Ok(r) => return r,
                Err(mpsc::RecvTimeoutError::Timeout) => obs.poll(),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(RunError::Fault(
                        "the batched engine stopped before finishing the job".into(),
                    ))
                }
            }
        }
    }
}

/// One job, waiting or in the batch.
struct Seq {
    st: SeqState<LlamaToken>,
    /// Tokens of this sequence in the batch being decoded.
    fed: usize,
    /// Index of this sequence's logits in the current batch.
    i_batch: Option<i32>,
    gen: Generation,
    reply: Reply,
    started: Instant,
    /// Too long for a KV stream of its own (or a media job): it runs only
    /// in the unified layout.
    long: bool,
    /// A media job's prompt chunks: evaluated into its slot by the
    /// projector (their own decode calls) at admission, and again after a
    /// preemption. Its `toks` start with one placeholder per prompt
    /// position, a value no other job has, so no prefix is ever shared.
    media: Option<MtmdInputChunks>,
}

/// How the context's KV cache is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// One stream shared by every sequence: any job fits while cells last,
    /// prefixes are shared without copying, but every token's attention
    /// reads the cells of all sequences.
    Unified,
    /// A stream of `stream_cells` per sequence: each token's attention
    /// reads its own sequence's cells only. For short jobs.
    Streams,
}

/// The context's fixed sizes.
#[derive(Clone, Copy, Debug)]
struct Shape {
    slots: u32,
    /// KV cells of the unified layout (--max-ctx capped by the model).
    n_ctx: u32,
    n_batch: u32,
    /// Cells of each stream in the streams layout; 0: never streams.
    stream_cells: u32,
    /// The most sequences admitted at once in the unified layout.
    unified_cap: usize,
}

impl Shape {
    fn params(&self, cfg: &EngineConfig, layout: Layout) -> LlamaContextParams {
        let n_ctx = match layout {
            Layout::Unified => self.n_ctx,
            Layout::Streams => self.stream_cells * (self.slots + 1),
        };
        LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n_ctx))
            .with_n_batch(self.n_batch)
            .with_n_ubatch(self.n_batch)
            .with_n_seq_max(self.slots + 1)
            .with_kv_unified(layout == Layout::Unified)
            .with_flash_attention_policy(match layout {
                Layout::Unified => cfg.flash_attn.policy(),
                Layout::Streams => cfg.flash_attn_streams.policy(),
            })
            .with_n_threads(cfg.threads as i32)
            .with_n_threads_batch(cfg.threads as i32)
    }

    /// The cells the scheduler may hand out in `layout`.
    fn sched(&self, layout: Layout, min_reuse: usize) -> Sched<LlamaToken> {
        let cells = match layout {
            Layout::Unified => self.n_ctx as usize,
            Layout::Streams => self.stream_cells as usize * self.slots as usize,
        };
        Sched::new(cells, self.n_batch as usize, self.slots, min_reuse).sharing_cells(layout == Layout::Unified)
    }
}

struct Engine<'m> {
    model: &'m dyn ModelParts,
    cfg: EngineConfig,
    /// None only while the layout is being switched.
    ctx: Option<LlamaContext<'m>>,
    layout: Layout,
    shape: Shape,
    /// A layout switch is waiting for the running jobs to end: nothing is
    /// admitted meanwhile.
    switching: bool,
    /// Streams layout: prompt chunks are decoded in calls of their own
    /// (llama.cpp splits a batch over several streams into equal parts per
    /// sequence, so a prompt beside one-token steps would be fed a token
    /// per call); this alternates them with the generation steps.
    prompt_turn: bool,
    sched: Sched<LlamaToken>,
    active: Vec<Seq>,
    waiting: VecDeque<Seq>,
    /// Embedding jobs received since the last step, computed together.
    embeds: Vec<(String, Reply)>,
    /// Slots to decode one at a time after a batch was refused as invalid input.
    isolate: VecDeque<i32>,
    /// Decode calls so far (for the test fault hook).
    decodes: u64,
    /// Set when the engine can no longer run anything.
    fault: Option<String>,
    /// Media jobs so far (their placeholder tokens are unique).
    media_jobs: i32,
    /// Written after every decode.
    stats: Arc<EngineStats>,
    /// Where the engine thread's time went, logged at debug level when it
    /// stops.
    tally: Tally,
    /// The CPU time decodes get (on the CPU only): a warning when other
    /// processes hold the CPUs.
    cpu_watch: Option<CpuWatch>,
}

/// The engine thread's time, by kind of decode call.
#[derive(Default)]
struct Tally {
    /// Calls with generation steps only, and the sequences they stepped.
    step_calls: u64,
    step_seqs: u64,
    /// Calls with prompt tokens (alone or beside steps), and those tokens.
    prompt_calls: u64,
    prompt_tokens: u64,
    /// Seconds inside llama_decode, and waiting for a job with none to run.
    decode_secs: f64,
    /// Of `decode_secs`, those of the calls with generation steps only.
    step_secs: f64,
    idle_secs: f64,
}

fn engine_main(
    model: Arc<dyn ModelParts>,
    cfg: EngineConfig,
    slots: u32,
    rx: Receiver<Msg>,
    ready: SyncSender<Result<(), EngineError>>,
    stats: Arc<EngineStats>,
) {
    let n_ctx = model.weights().cap_ctx(cfg.max_ctx);
    let n_batch = cfg.n_batch.min(n_ctx).max(slots);
    let stream_cells = if cfg.kv_streams && slots >= 2 {
        (n_ctx / (slots + 1)).max(256).div_ceil(256) * 256
    } else {
        0
    };
    let shape = Shape {
        slots,
        n_ctx,
        n_batch,
        stream_cells,
        unified_cap: match cfg.unified_slots {
            0 => slots as usize,
            n => n.min(slots) as usize,
        },
    };
    // With streams, start in them: jobs claimed together arrive one by one,
    // and a first short job started in the shared stream made every other
    // one wait until it ended (a switch waits for the running jobs).
    let layout = if stream_cells > 0 {
        Layout::Streams
    } else {
        Layout::Unified
    };
    let ctx = match new_context(&model.weights().llama, shape.params(&cfg, layout)) {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    stats
        .kv_cells
        .store(u64::from(n_ctx), std::sync::atomic::Ordering::Relaxed);
    let streams = match stream_cells {
        0 => String::new(),
        c => format!(
            "; jobs within {c} cells (prompt and max tokens) get a KV stream each while two or more are in flight or waiting (flash attention {} there)",
            cfg.flash_attn_streams.name()
        ),
    };
    let cap = match shape.unified_cap {
        c if c < slots as usize => format!(" (at most {c} decoded together there)"),
        _ => String::new(),
    };
    tracing::info!(
        "batched engine: {slots} slots, {n_ctx} shared KV cells{cap}, {n_batch} tokens per decode, {} threads, flash attention {}{streams}",
        cfg.threads,
        cfg.flash_attn.name()
    );
    let min_reuse = cfg.prefix_reuse_min as usize;
    let cpu_watch = (cfg.gpu_layers == 0).then(|| CpuWatch::new(cfg.threads));
    let mut e = Engine {
        model: &*model,
        cfg,
        ctx: Some(ctx),
        layout,
        shape,
        switching: false,
        prompt_turn: false,
        sched: shape.sched(layout, min_reuse),
        active: Vec::new(),
        waiting: VecDeque::new(),
        embeds: Vec::new(),
        isolate: VecDeque::new(),
        decodes: 0,
        fault: None,
        media_jobs: 0,
        stats,
        tally: Tally::default(),
        cpu_watch,
    };
    let started = std::time::Instant::now();
    if layout == Layout::Streams {
        tracing::debug!("KV layout: {layout:?} (at start)");
    }
    let mut quit = false;
    while !quit && e.fault.is_none() {
        // Block only when there is nothing to do.
        if e.active.is_empty() && e.waiting.is_empty() {
            let t = std::time::Instant::now();
            let m = rx.recv();
            e.tally.idle_secs += t.elapsed().as_secs_f64();
            match m {
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
        e.relayout();
        e.admit();
        if !e.active.is_empty() {
            e.step();
        }
    }
    let t = &e.tally;
    tracing::debug!(
        "batched engine: {:.2} s running, {:.2} s idle, {:.2} s decoding: {} calls stepping {:.1} sequences on average in {:.2} ms each, {} calls with {:.1} prompt tokens on average in {:.2} ms each",
        started.elapsed().as_secs_f64() - t.idle_secs,
        t.idle_secs,
        t.decode_secs,
        t.step_calls,
        t.step_seqs as f64 / t.step_calls.max(1) as f64,
        t.step_secs * 1e3 / t.step_calls.max(1) as f64,
        t.prompt_calls,
        t.prompt_tokens as f64 / t.prompt_calls.max(1) as f64,
        (t.decode_secs - t.step_secs) * 1e3 / t.prompt_calls.max(1) as f64
    );
    if let Some(why) = e.fault.clone() {
        tracing::error!("batched engine fault: {why}; the engine has stopped");
        e.fail_all(&why);
        // Later requests find the channel closed and get a fault too.
        drop(rx);
        return;
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
                req: Request::EmbedMedia { text, media },
                obs: _,
                reply,
            } => {
                // Its own context, like every embedding: the shared one is untouched.
                let _ = reply.send(self.model.embed_media(self.cfg.threads, &text, &media));
                false
            }
            Msg::Job {
                req: Request::Speech(s),
                obs,
                reply,
            } => {
                // Runners voice speech on their own thread; should one
                // arrive here, it still gets its own context.
                let _ = reply.send(self.model.speak(&self.cfg, self.cfg.threads, s, obs));
                false
            }
            Msg::Job {
                req: Request::Text(req),
                obs,
                reply,
            } => {
                let stream_cells = self.shape.stream_cells as usize;
                let prepared = self.prompt(&req).and_then(|(toks, media, max_gen)| {
                    let long = media.is_some() || toks.len() + max_gen as usize > stream_cells;
                    let sampler = req
                        .sampling
                        .sampler(&self.model.weights().llama, req.grammar.as_deref())
                        .map_err(|e| RunError::Rejected(e.to_string()))?;
                    Ok(Seq {
                        long,
                        st: SeqState::new(toks),
                        fed: 0,
                        i_batch: None,
                        gen: Generation::new(sampler, max_gen, req.stop, obs),
                        reply: reply.clone(),
                        started: Instant::now(),
                        media,
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

    /// A job's prompt tokens (placeholders for a media job, with its
    /// chunks) and the most tokens it may generate.
    fn prompt(&mut self, req: &TextRequest) -> Result<(Vec<LlamaToken>, Option<MtmdInputChunks>, u32), RunError> {
        let limit = self.shape.n_ctx;
        let Some(m) = &req.media else {
            let (toks, max_gen) = plan_text(self.model.weights(), limit, &req.prompt, req.max_tokens)?;
            return Ok((toks, None, max_gen));
        };
        let (chunks, n, max_gen) = self.model.plan_media(limit, req, m)?;
        if self.model.require_projector("a media job")?.mrope {
            return Err(RunError::Rejected(
                "this projector places media with M-RoPE positions, which the batched engine does not track; run nrvnad with --engine per-job for this model".into(),
            ));
        }
        self.media_jobs = self.media_jobs.wrapping_add(1) & 0x3fff_ffff;
        let placeholder = LlamaToken::new(-1 - self.media_jobs);
        Ok((vec![placeholder; n as usize], Some(chunks), max_gen))
    }

    /// Evaluates an admitted media job's prompt into its slot (mtmd's own
    /// decode calls, with only this job's positions), then samples its
    /// first token at once, before the next shared decode replaces the
    /// logits. A job that resumes after a preemption feeds what it had
    /// generated through the shared batch as usual.
    fn eval_media(&mut self, i: usize) {
        let s = &mut self.active[i];
        let (Some(chunks), Some(slot)) = (&s.media, s.st.slot) else {
            return;
        };
        let res = self.model.require_projector("a media job").and_then(|p| {
            let ctx = self.ctx.as_mut().expect("a context outside a layout switch");
            p.eval(chunks, ctx, 0, slot, self.sched.n_batch as i32)
        });
        match res {
            Ok(_) => {
                s.st.n_past = s.st.n_prompt;
                if s.st.toks.len() > s.st.n_past {
                    return;
                }
                let t = s.gen.sampler.sample(self.ctx.as_ref().expect("a context"), -1);
                if s.gen.push(&self.model.weights().llama, t) {
                    s.st.toks.push(t);
                } else {
                    let s = self.active.swap_remove(i);
                    let out = finished(&s);
                    self.release(s, Ok(out));
                }
            }
            Err(e) => {
                let s = self.active.swap_remove(i);
                self.release(s, Err(e));
            }
        }
    }

    fn active_states(&self) -> Vec<&SeqState<LlamaToken>> {
        self.active.iter().map(|s| &s.st).collect()
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

    /// Moves waiting jobs into free slots while their cells fit.
    fn admit(&mut self) {
        loop {
            if self.switching || (self.layout == Layout::Unified && self.active.len() >= self.shape.unified_cap) {
                return;
            }
            let adm = {
                let active = self.active_states();
                let waiting: VecDeque<&SeqState<LlamaToken>> = self.waiting.iter().map(|s| &s.st).collect();
                self.sched.next_admission(&active, &waiting)
            };
            let Some(adm) = adm else { return };
            if adm.drop_cache {
                self.drop_cache();
            }
            let mut s = self.waiting.remove(adm.idx).expect("index from next_admission");
            let slot = self.sched.admit(&mut s.st, adm.reuse);
            if let Some((src, n)) = adm.reuse {
                self.copy_prefix(src, slot, n);
            }
            let media = s.media.is_some();
            self.active.push(s);
            if media {
                self.eval_media(self.active.len() - 1);
            }
        }
    }

    /// Computes every pending embedding in one decode call.
    fn run_embeds(&mut self) {
        let jobs = std::mem::take(&mut self.embeds);
        let texts: Vec<&str> = jobs.iter().map(|(t, _)| t.as_str()).collect();
        let results = embed_many(self.model.weights(), self.cfg.threads, &texts);
        if jobs.len() > 1 {
            tracing::debug!("computed {} embeddings in one batch", jobs.len());
        }
        for ((_, reply), r) in jobs.into_iter().zip(results) {
            let _ = reply.send(r);
        }
    }

    /// The context (absent only inside a layout switch).
    fn ctx_mut(&mut self) -> &mut LlamaContext<'m> {
        self.ctx.as_mut().expect("a context outside a layout switch")
    }

    /// Gives sequence `dst` the first `n` cells of `src`. In one stream
    /// the cells are shared; across streams llama.cpp copies only whole
    /// streams, so the copy is cut back to `n` after.
    fn copy_prefix(&mut self, src: i32, dst: i32, n: usize) {
        let layout = self.layout;
        let ctx = self.ctx_mut();
        match layout {
            Layout::Unified => {
                let _ = ctx.kv_cache_seq_cp(src, dst, Some(0), Some(n as u32));
            }
            Layout::Streams => {
                let _ = ctx.kv_cache_seq_cp(src, dst, None, None);
                let _ = ctx.kv_cache_seq_rm(dst, Some(n as u32), None);
            }
        }
    }

    /// The layout the jobs held call for: unified while any of them is
    /// long; streams once two or more short ones are in flight or waiting;
    /// else the current one. A switch rebuilds the context once the
    /// running jobs have ended (until then nothing is admitted).
    fn relayout(&mut self) {
        if self.shape.stream_cells == 0 {
            return;
        }
        let long = self.active.iter().chain(self.waiting.iter()).any(|s| s.long);
        let held = self.active.len() + self.waiting.len();
        let want = if long {
            Layout::Unified
        } else if held >= 2 {
            Layout::Streams
        } else {
            self.layout
        };
        if want == self.layout {
            self.switching = false;
            return;
        }
        self.switching = true;
        if !self.active.is_empty() {
            return;
        }
        let t = Instant::now();
        // The old context goes first, so both never hold memory at once.
        self.ctx = None;
        let model = self.model;
        let built = new_context(&model.weights().llama, self.shape.params(&self.cfg, want));
        let (ctx, layout) = match built {
            Ok(c) => (c, want),
            Err(e) => {
                tracing::warn!(
                    "KV layout switch failed ({e}); staying with the {:?} layout",
                    self.layout
                );
                match new_context(&model.weights().llama, self.shape.params(&self.cfg, self.layout)) {
                    Ok(c) => {
                        // Short jobs run in the unified layout too; long ones
                        // need it, so a failed switch to streams is harmless
                        // and a failed switch to unified is not retried in a loop.
                        self.shape.stream_cells = 0;
                        (c, self.layout)
                    }
                    Err(e) => {
                        self.fault = Some(format!("recreating the llama.cpp context failed: {e}"));
                        return;
                    }
                }
            }
        };
        self.ctx = Some(ctx);
        self.layout = layout;
        self.switching = false;
        self.sched = self.shape.sched(layout, self.cfg.prefix_reuse_min as usize);
        tracing::debug!(
            "KV layout: {layout:?} ({} jobs held, {:.0} ms to switch)",
            held,
            t.elapsed().as_secs_f64() * 1000.0
        );
    }

    fn drop_cache(&mut self) {
        let seq = self.sched.cache_seq;
        let _ = self.ctx_mut().kv_cache_seq_rm(seq, None, None);
        self.sched.cache.clear();
    }

    /// Puts the most recently admitted sequence back in the queue (its KV is
    /// dropped; it resumes by re-decoding its prompt and what it generated).
    fn preempt_youngest(&mut self) -> bool {
        let Some(youngest) = self.sched.youngest(&self.active_states()) else {
            return false;
        };
        let mut s = self.active.swap_remove(youngest);
        if let Some(slot) = self.sched.free(&mut s.st) {
            let _ = self.ctx_mut().kv_cache_seq_rm(slot, None, None);
        }
        tracing::debug!("KV cache full: preempted a sequence of {} tokens", s.st.toks.len());
        self.waiting.push_front(s);
        true
    }

    /// One decode call: the next token of every generating sequence, then
    /// prompt chunks up to the batch size.
    fn step(&mut self) {
        loop {
            // After an invalid-input refusal, one sequence at a time.
            let only = loop {
                match self.isolate.front() {
                    None => break None,
                    Some(&slot) => match self.active.iter().position(|s| s.st.slot == Some(slot)) {
                        Some(i) => break Some(i),
                        None => {
                            self.isolate.pop_front();
                        }
                    },
                }
            };
            let mut feeds = self.sched.plan_batch(&self.active_states(), only);
            if self.layout == Layout::Streams {
                self.streams_feeds(&mut feeds);
            }
            let mut batch = LlamaBatch::new(self.sched.n_batch, 1);
            for s in &mut self.active {
                s.fed = 0;
                s.i_batch = None;
            }
            for f in &feeds {
                let s = &mut self.active[f.seq];
                let slot = s.st.slot.expect("active sequences have a slot");
                for p in f.from..f.from + f.take {
                    let logits = f.wants_logits && p == f.from + f.take - 1;
                    if logits {
                        s.i_batch = Some(batch.n_tokens());
                    }
                    let _ = batch.add(s.st.toks[p], p as i32, &[slot], logits);
                }
                s.fed = f.take;
            }
            if batch.n_tokens() == 0 {
                return;
            }
            self.decodes += 1;
            let cpu0 = self.cpu_watch.as_ref().map(|_| process_cpu_secs());
            let t = std::time::Instant::now();
            let res = if self.cfg.test_decode_fault == Some(self.decodes) {
                Err(llama_cpp_2::DecodeError::Unknown(-3))
            } else {
                self.ctx_mut().decode(&mut batch)
            };
            let secs = t.elapsed().as_secs_f64();
            if let (Some(w), Some(cpu0)) = (&mut self.cpu_watch, cpu0) {
                w.record(cpu0, secs);
            }
            self.tally.decode_secs += secs;
            let prompt_tokens: usize = feeds.iter().filter(|f| f.is_prompt()).map(|f| f.take).sum();
            if prompt_tokens > 0 {
                self.tally.prompt_calls += 1;
                self.tally.prompt_tokens += prompt_tokens as u64;
            } else {
                self.tally.step_calls += 1;
                self.tally.step_seqs += feeds.len() as u64;
                self.tally.step_secs += secs;
            }
            match res {
                Ok(()) => {
                    if only.is_some() {
                        self.isolate.pop_front();
                    }
                    self.stats.decoded(feeds.len(), batch.n_tokens() as usize);
                    self.after_decode();
                    let cells = self.sched.cells_used(self.active.iter().map(|a| &a.st));
                    self.stats
                        .kv_cells_used
                        .store(cells as u64, std::sync::atomic::Ordering::Relaxed);
                    return;
                }
                Err(llama_cpp_2::DecodeError::NoKvCacheSlot) if !self.sched.cache.is_empty() => self.drop_cache(),
                Err(llama_cpp_2::DecodeError::NoKvCacheSlot) if self.preempt_youngest() => {}
                Err(err @ llama_cpp_2::DecodeError::NTokensZero) if feeds.len() > 1 => {
                    tracing::warn!(
                        "decode refused a batch of {} jobs as invalid input ({err}); retrying them one at a time",
                        feeds.len()
                    );
                    self.isolate = feeds.iter().filter_map(|f| self.active[f.seq].st.slot).collect();
                    return;
                }
                Err(err) if feeds.len() == 1 && matches!(err, llama_cpp_2::DecodeError::NTokensZero) => {
                    self.isolate.pop_front();
                    let s = self.active.swap_remove(feeds[0].seq);
                    let e = RunError::from_decode(err, true, "decoding");
                    self.release(s, Err(e));
                    return;
                }
                Err(err) => {
                    self.fault = Some(format!(
                        "llama.cpp decode failed ({err}) with {} jobs in the batch",
                        feeds.len()
                    ));
                    return;
                }
            }
        }
    }

    /// Streams layout: one decode call holds either every generating
    /// sequence's next token or prompt chunks, taking turns, in sequence
    /// order (llama.cpp puts only consecutive sequence ids in one part).
    fn streams_feeds(&mut self, feeds: &mut Vec<crate::run::sched::Feed>) {
        let steps = feeds.iter().filter(|f| !f.is_prompt()).count();
        if steps > 0 && steps < feeds.len() {
            let prompts = self.prompt_turn;
            feeds.retain(|f| f.is_prompt() == prompts);
        }
        self.prompt_turn = !self.prompt_turn;
        let active = &self.active;
        feeds.sort_by_key(|f| active[f.seq].st.slot);
    }

    fn after_decode(&mut self) {
        let model = self.model;
        let mut i = 0;
        while i < self.active.len() {
            let s = &mut self.active[i];
            s.st.n_past += s.fed;
            s.fed = 0;
            let Some(ib) = s.i_batch.take() else {
                i += 1;
                continue;
            };
            let t = s.gen.sampler.sample(self.ctx.as_ref().expect("a context"), ib);
            if s.gen.push(&model.weights().llama, t) {
                s.st.toks.push(t);
                i += 1;
            } else {
                let s = self.active.swap_remove(i);
                let out = finished(&s);
                self.release(s, Ok(out));
            }
        }
    }

    /// Frees a sequence's cells (keeping its prompt as the prefix cache when
    /// worth it) and answers its worker.
    fn release(&mut self, mut s: Seq, result: Result<Output, RunError>) {
        if let Some(slot) = s.st.slot {
            // A media job's placeholders are no prefix anyone shares.
            if result.is_ok() && s.media.is_none() {
                let others = self.sched.cells_used(self.active.iter().map(|a| &a.st)) - self.sched.cache.len();
                if let Some(n) = self.sched.keep_as_cache(&s.st, others) {
                    self.drop_cache();
                    self.copy_prefix(slot, self.sched.cache_seq, n);
                    self.sched.cache = s.st.toks[..n].to_vec();
                }
            }
            let _ = self.ctx_mut().kv_cache_seq_rm(slot, None, None);
            self.sched.free(&mut s.st);
        }
        let result = result.map(|mut o| {
            o.text = std::mem::take(&mut s.gen.text);
            o
        });
        let _ = s.reply.send(result);
    }

    /// Answers every job the engine holds with a fault.
    fn fail_all(&mut self, why: &str) {
        for (_, reply) in self.embeds.drain(..) {
            let _ = reply.send(Err(RunError::Fault(why.into())));
        }
        for s in std::mem::take(&mut self.active)
            .into_iter()
            .chain(std::mem::take(&mut self.waiting))
        {
            let _ = s.reply.send(Err(RunError::Fault(why.into())));
        }
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

/// The output of a sequence that finished generating (its text is moved
/// in by `release`).
fn finished(s: &Seq) -> Output {
    Output {
        prompt_tokens: s.st.n_prompt as u32,
        generated_tokens: s.gen.generated,
        reused_tokens: s.st.reused as u32,
        gen_secs: s.started.elapsed().as_secs_f64(),
        finish: s.gen.finish,
        text: String::new(),
        embedding: None,
        audio: None,
    }
}
