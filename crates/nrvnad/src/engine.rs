//! The daemon's side of inference: which engine runs (batched, per-job, or
//! the echo test double), one Runner per worker, prompt rendering, grammar
//! checks, and a bounded engine shutdown.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nrvna_engine::batched::BatchedEngine;
use nrvna_engine::perjob::PerJobRunner;
use nrvna_engine::{EngineConfig, FlashAttn, Model, Observer, Output, Request, RunError, Runner};

use crate::cli::{EngineKind, AUTO_WORKERS, DEFAULT_WORKERS};

/// The loaded inference back end.
pub struct Inference {
    pub kind: EngineKind,
    pub cfg: EngineConfig,
    pub model: Option<Arc<Model>>,
    model_path: PathBuf,
    model_name: String,
    batched: Option<BatchedEngine>,
    workers: u32,
}

impl Inference {
    /// Loads the model (not for Echo) and starts the engine.
    pub fn start(
        kind: EngineKind,
        model_path: &std::path::Path,
        mmproj: Option<&std::path::Path>,
        vocoder: Option<&std::path::Path>,
        speaker: Option<&std::path::Path>,
        cfg: EngineConfig,
        workers: u32,
    ) -> anyhow::Result<Inference> {
        if kind == EngineKind::Echo {
            let workers = if workers == AUTO_WORKERS {
                DEFAULT_WORKERS
            } else {
                workers
            };
            return Ok(Inference {
                kind,
                cfg,
                model: None,
                model_path: model_path.to_owned(),
                model_name: "echo".into(),
                batched: None,
                workers,
            });
        }
        let mut model = Model::load(model_path, cfg.gpu_layers, cfg.chat_template_file.as_deref())?;
        if let Some(p) = mmproj {
            model.attach_projector(p, cfg.threads, cfg.gpu_layers > 0)?;
            let pr = model
                .projector
                .as_ref()
                .map(|p| (p.vision, p.audio))
                .unwrap_or_default();
            tracing::info!("loaded projector {} (vision: {}, audio: {})", p.display(), pr.0, pr.1);
        }
        if let Some(v) = vocoder {
            model.attach_vocoder(v, speaker)?;
            if let Some(s) = &model.speech {
                tracing::info!(
                    "loaded vocoder {} (OuteTTS {} layout, {} audio codes, voice: {})",
                    v.display(),
                    s.layout.version.as_str(),
                    s.layout.n_codes(),
                    s.speaker_source
                );
            }
        } else if speaker.is_some() {
            anyhow::bail!("--speaker is for text-to-speech jobs, which need --vocoder FILE too");
        }
        let model = Arc::new(model);
        tracing::info!(
            "loaded {} (training context {}, chat template from {})",
            model.file_name(),
            model.n_ctx_train(),
            model.template.source
        );
        let mut cfg = cfg;
        // Daemons with a projector or vocoder attached keep the plain
        // defaults (4 workers; flash attention timed at 4 sequences). This
        // began when their measurements ran about 100x slower in the
        // media tests; that was the busy machine (the tests' daemons
        // starting together; see `busy_now`), not the projector: alone,
        // with the vision or audio fixture attached, every measurement
        // here matches a plain daemon's. Sizing their batch by
        // measurement would need a look at what a media job holds per
        // worker first.
        let media = model.projector.is_some() || model.speech.is_some();
        // The measurements below time decode steps; they are not tried
        // while other processes hold the CPUs (the timings would be
        // theirs, and each measurement would take seconds to minutes), nor
        // after one of them finds it so: `busy` says why.
        let measures =
            cfg.flash_attn == FlashAttn::Auto || (workers == AUTO_WORKERS && kind == EngineKind::Batched && !media);
        let mut busy = (measures && cfg.gpu_layers == 0)
            .then(|| busy_now(cfg.threads))
            .flatten();
        // Flash attention first: the batch sizes are then timed with the
        // setting each layout will run (timed without it, the shared
        // stream's best was 4 jobs at 285 tok/s, where flash attention ran
        // 16 at 590 tok/s). Under --workers auto it is timed at 16 jobs.
        if cfg.flash_attn == FlashAttn::Auto {
            let seqs = match (workers, kind) {
                (AUTO_WORKERS, EngineKind::Batched) if !media => nrvna_engine::probe::CHOICE_MAX_SEQS,
                (AUTO_WORKERS, _) => DEFAULT_WORKERS,
                (n, _) => n,
            };
            cfg.flash_attn = choose_flash_attn(&model, &cfg, kind, seqs, true, &mut busy);
            cfg.flash_attn_streams = if kind == EngineKind::Batched && cfg.kv_streams && !media {
                choose_flash_attn(&model, &cfg, kind, seqs, false, &mut busy)
            } else {
                cfg.flash_attn
            };
        }
        let workers = match (workers, kind) {
            (AUTO_WORKERS, EngineKind::Batched) if media => {
                tracing::info!(
                    "workers: {DEFAULT_WORKERS} (auto: not measured with a projector or vocoder attached; --workers N sets it)"
                );
                DEFAULT_WORKERS
            }
            (AUTO_WORKERS, EngineKind::Batched) => {
                let (w, unified) = choose_slots(&model, &cfg, &mut busy);
                cfg.unified_slots = unified;
                w
            }
            (AUTO_WORKERS, _) => DEFAULT_WORKERS,
            (n, _) => n,
        };
        let batched = match kind {
            EngineKind::Batched => Some(BatchedEngine::start(model.clone(), cfg.clone(), workers)?),
            _ => None,
        };
        Ok(Inference {
            kind,
            model_name: model.file_name(),
            cfg,
            model: Some(model),
            model_path: model_path.to_owned(),
            batched,
            workers,
        })
    }

    /// Jobs in flight: the workers asked for, or with `--workers auto` the
    /// number chosen at start.
    pub fn workers(&self) -> u32 {
        self.workers
    }

    /// A Runner for one worker.
    /// The batched engine's running figures (batch sizes, KV cells); none
    /// for the other engines.
    pub fn stats(&self) -> Option<Arc<nrvna_engine::EngineStats>> {
        self.batched.as_ref().map(BatchedEngine::stats)
    }

    pub fn runner(&self) -> Box<dyn Runner> {
        match (&self.batched, &self.model) {
            (Some(b), _) => Box::new(b.runner()),
            (None, Some(m)) => Box::new(PerJobRunner::new(m.clone(), self.cfg.clone(), self.workers)),
            (None, None) => Box::new(EchoRunner),
        }
    }

    /// Renders a prompt with the model's chat template.
    pub fn render(&self, system: Option<&str>, prompt: &str) -> Result<String, String> {
        match &self.model {
            Some(m) => m.render(system, prompt).map_err(|e| e.to_string()),
            None => Ok(match system {
                Some(s) => format!("{s}\n\n{prompt}"),
                None => prompt.to_owned(),
            }),
        }
    }

    /// Converts a JSON Schema into GBNF with llama.cpp's converter.
    pub fn schema_to_grammar(&self, schema: &str) -> Result<String, String> {
        nrvna_engine::sampling::schema_to_grammar(schema).map_err(|e| e.to_string())
    }

    /// Checks a GBNF grammar. llama.cpp prints its parser's reason on
    /// stderr, which this process never redirects: on a rejection, a child
    /// `nrvnad explain-grammar` parses it again and its stderr is read.
    pub fn check_grammar(&self, g: &str) -> Result<(), String> {
        let Some(m) = &self.model else {
            return Ok(());
        };
        match nrvna_engine::sampling::check_grammar(m.llama(), g) {
            Ok(()) => Ok(()),
            Err(rejected) => Err(match explain_grammar(&self.model_path, g) {
                Some(reason) => format!("llama.cpp rejected the grammar: {reason}"),
                None => rejected.to_string(),
            }),
        }
    }

    /// The model's file name (recorded in meta.json), or "echo".
    pub fn model_name(&self) -> &str {
        &self.model_name
    }

    /// Stops the engine thread, waiting at most `within`; false if it did
    /// not stop in time.
    pub fn shutdown_within(&self, within: Duration) -> bool {
        match &self.batched {
            Some(b) => b.shutdown_within(within),
            None => true,
        }
    }
}

/// Why the start-up measurements should not run now, if they should not:
/// spinning on as many CPUs as the engine has threads (at most all of
/// them) for 50 ms got less than [`nrvna_engine::cpu::MIN_CPU_SHARE`]
/// of their time.
fn busy_now(threads: u32) -> Option<String> {
    use nrvna_engine::cpu::{cpu_share, runnable, MIN_CPU_SHARE};
    let (share, cpus) = (
        cpu_share(threads, std::time::Duration::from_millis(50)),
        runnable(threads),
    );
    tracing::debug!(
        "before measuring: spinning on {cpus} CPUs for 50 ms got {:.0}% of their time",
        share * 100.0
    );
    (share < MIN_CPU_SHARE).then(|| {
        format!(
            "the machine is busy: spinning on {cpus} CPUs for 50 ms, this process got {:.0}% of their time (at least {:.0}% \
             needed)",
            share * 100.0,
            MIN_CPU_SHARE * 100.0
        )
    })
}

/// Keeps `e`'s reason in `busy` when it says the machine is busy, so that
/// the measurements after it are not tried.
fn note_busy(busy: &mut Option<String>, e: &nrvna_engine::probe::ProbeError) {
    if matches!(e, nrvna_engine::probe::ProbeError::Busy { .. }) {
        *busy = Some(e.to_string());
    }
}

/// `--workers auto` with the batched engine: times a decode step at batch
/// sizes 4, 8, 16, ... in the engine's shapes (each sequence holding a chat
/// job's cells), with a KV stream per sequence (short jobs, when
/// `--kv-layout auto`) and with one shared stream, and takes for each the
/// smallest size within 5% of its best. The workers are the larger of the
/// two; the unified layout decodes at most its own. If the measurement
/// fails, or an earlier one found the machine busy (`busy`, set when this
/// one does), [`DEFAULT_WORKERS`].
fn choose_slots(model: &Model, cfg: &EngineConfig, busy: &mut Option<String>) -> (u32, u32) {
    use nrvna_engine::probe::{measure_slots, pick_slots, ProbeConfig, SLOTS_CELLS_PER_SEQ};
    if let Some(why) = busy {
        tracing::warn!(
            "--workers auto: batch sizes not measured ({why}); running {DEFAULT_WORKERS} workers (--workers N sets it)"
        );
        return (DEFAULT_WORKERS, 0);
    }
    let n_ctx = model.weights.cap_ctx(cfg.max_ctx);
    let base = ProbeConfig {
        flash_attn: false,
        kv_unified: true,
        threads: cfg.threads,
        n_ctx: 256,
        n_batch: 256,
    };
    let t = std::time::Instant::now();
    // As many jobs as the KV cache holds: in one shared stream, jobs of
    // that many cells; with a stream per job (and one for the prefix
    // cache), streams of 256 cells, the smallest llama.cpp makes, within
    // 5% of the same memory.
    let sweep = |kv_unified: bool| {
        let max_slots = if kv_unified {
            n_ctx / SLOTS_CELLS_PER_SEQ as u32
        } else {
            (n_ctx + n_ctx / 20) / 256 - 1
        };
        // Each layout with the flash-attention setting it runs.
        let flash_attn = if kv_unified {
            cfg.flash_attn
        } else {
            cfg.flash_attn_streams
        } == FlashAttn::On;
        measure_slots(
            &model.weights,
            &ProbeConfig {
                kv_unified,
                flash_attn,
                ..base
            },
            max_slots,
            cfg.gpu_layers == 0,
        )
    };
    let show = |m: &[(u32, f64)]| {
        m.iter()
            .map(|(b, t)| format!("{t:.0} tok/s at {b}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let unified = match sweep(true) {
        Ok(m) => m,
        Err(e) => {
            note_busy(busy, &e);
            tracing::warn!(
                "--workers auto: measuring batch sizes failed ({e}); running {DEFAULT_WORKERS} workers (--workers N sets it)"
            );
            return (DEFAULT_WORKERS, 0);
        }
    };
    let u = pick_slots(&unified).unwrap_or(DEFAULT_WORKERS);
    let streams = if cfg.kv_streams {
        match sweep(false) {
            Ok(m) => Some(m),
            Err(e) => {
                note_busy(busy, &e);
                tracing::warn!("--workers auto: measuring batch sizes with a KV stream per job failed ({e})");
                None
            }
        }
    } else {
        None
    };
    let s = streams.as_deref().and_then(pick_slots);
    let workers = s.map_or(u, |s| s.max(u));
    tracing::info!(
        "workers: {workers} (auto: a decode step of jobs holding {SLOTS_CELLS_PER_SEQ} KV cells each measured {} in one shared \
         stream{}; the shared stream holds {n_ctx} cells, {} such jobs; each layout runs the smallest batch within 5% of its best{}, \
         measured in {:.2} s; --workers N sets it)",
        show(&unified),
        streams
            .as_deref()
            .map(|m| format!(", and {} with a stream per job", show(m)))
            .unwrap_or_default(),
        n_ctx as usize / SLOTS_CELLS_PER_SEQ,
        if u < workers { format!(": {u} together in the shared stream") } else { String::new() },
        t.elapsed().as_secs_f64()
    );
    (workers, if u < workers { u } else { 0 })
}

/// `NRVNA_FLASH_ATTN=auto`: times a short decode loop with flash attention
/// on and off, shaped like the engine's contexts (the batched engine's
/// slots, up to 16, in one context with all threads, each with a prompt
/// in its cells; or one sequence with a worker's share of the threads),
/// and keeps the faster; `kv_unified: false` measures the batched
/// engine's other layout, a KV stream per sequence (there the choice can
/// differ: llama.cpp's flash-attention kernel took 53% of a 64-job run with
/// a stream per job). If the measurement fails, llama.cpp's own automatic
/// choice stays; the same when an earlier measurement found the machine
/// busy (`busy`, set when this one does).
fn choose_flash_attn(
    model: &Model,
    cfg: &EngineConfig,
    kind: EngineKind,
    workers: u32,
    kv_unified: bool,
    busy: &mut Option<String>,
) -> FlashAttn {
    let layout = if kv_unified { "" } else { " with a KV stream per job" };
    if let Some(why) = busy {
        tracing::warn!(
            "flash attention{layout} left to llama.cpp (on where the backend has it): not measured ({why}); \
             NRVNA_FLASH_ATTN=on or off chooses it"
        );
        return FlashAttn::Auto;
    }
    let (seqs, threads) = match kind {
        EngineKind::Batched => (workers.min(nrvna_engine::probe::CHOICE_MAX_SEQS), cfg.threads),
        _ => (1, (cfg.threads / workers.max(1)).max(1)),
    };
    let base = nrvna_engine::probe::ProbeConfig {
        flash_attn: false,
        kv_unified,
        threads,
        n_ctx: 256,
        n_batch: 256,
    };
    let t = std::time::Instant::now();
    match nrvna_engine::probe::choose_flash_attn(&model.weights, &base, seqs, cfg.gpu_layers == 0) {
        Ok((on, on_tok_s, off_tok_s)) => {
            tracing::info!(
                "flash attention {}{layout} (auto: {seqs} sequences x {threads} threads measured {on_tok_s:.1} tok/s with it, \
                 {off_tok_s:.1} without, in {:.2} s)",
                if on { "on" } else { "off" },
                t.elapsed().as_secs_f64()
            );
            if on {
                FlashAttn::On
            } else {
                FlashAttn::Off
            }
        }
        Err(e) => {
            note_busy(busy, &e);
            tracing::warn!(
                "flash attention{layout} left to llama.cpp (on where the backend has it): measuring it failed ({e}); \
                 NRVNA_FLASH_ATTN=on or off chooses it"
            );
            FlashAttn::Auto
        }
    }
}

/// Runs `nrvnad explain-grammar MODEL` with the grammar on stdin and
/// returns llama.cpp's reason from its stderr (at most 30 s).
fn explain_grammar(model: &std::path::Path, g: &str) -> Option<String> {
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};
    let exe = std::env::current_exe().ok()?;
    let mut child = Command::new(exe)
        .arg("explain-grammar")
        .arg(model)
        .env("NRVNA_LOG_LEVEL", "error")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let mut stdin = child.stdin.take()?;
    let text = g.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(text.as_bytes());
    });
    let mut stderr = child.stderr.take()?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
        }
    }
    let _ = writer.join();
    let out = reader.join().ok()?;
    let lines = nrvna_engine::sampling::grammar_reason(&out);
    (!lines.is_empty()).then(|| lines.join("; "))
}

/// `nrvnad explain-grammar MODEL`: parses stdin as GBNF against the model's
/// vocabulary; llama.cpp writes its reason to stderr. Exit 0 if accepted.
pub fn explain_grammar_main(model: &std::path::Path) -> anyhow::Result<std::process::ExitCode> {
    use std::io::Read;
    let mut g = String::new();
    std::io::stdin().read_to_string(&mut g)?;
    let vocab = Model::load_vocab(model)?;
    Ok(match nrvna_engine::sampling::check_grammar(&vocab, &g) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(_) => std::process::ExitCode::from(1),
    })
}

/// The engine test double: answers with the prompt, embeds to a fixed
/// 8-dimensional vector. No model is loaded. Honors `should_stop`.
///
/// For fault-injection tests, a prompt that is exactly one of these makes
/// it misbehave: `nrvna-test:panic` panics in the worker,
/// `nrvna-test:fault` reports an engine fault, `nrvna-test:hang` writes
/// "hanging" to partial.txt, then ignores every stop request for an hour
/// (a stuck job). A prompt starting `nrvna-test:sleep:MS` takes MS
/// milliseconds, polling its observer and honoring stops meanwhile (a
/// job that is running when a test kills or pauses its daemon).
pub struct EchoRunner;

/// The echo engine's embedding: the bytes folded into 8 dimensions, normalised.
fn echo_embedding(bytes: impl Iterator<Item = u8>) -> Result<Output, RunError> {
    let mut v = [0f32; 8];
    for (i, b) in bytes.enumerate() {
        v[i % 8] += f32::from(b);
    }
    v[0] += 1.0;
    Ok(Output {
        embedding: Some(nrvna_engine::embed::normalize(&v).map_err(|e| RunError::Rejected(e.to_string()))?),
        prompt_tokens: 1,
        ..Output::default()
    })
}

/// The echo engine's answer to a stop request: nothing generated.
fn stopped(reason: String) -> RunError {
    RunError::Stopped {
        reason,
        partial: String::new(),
        generated_tokens: 0,
    }
}

impl Runner for EchoRunner {
    fn run(&mut self, req: Request, obs: Arc<dyn Observer>) -> Result<Output, RunError> {
        obs.poll();
        if let Some(reason) = obs.should_stop() {
            return Err(stopped(reason));
        }
        match req {
            Request::Text(t) => {
                match t.prompt.as_str() {
                    "nrvna-test:panic" => panic!("echo engine: injected panic"),
                    "nrvna-test:fault" => return Err(RunError::Fault("echo engine: injected fault".into())),
                    "nrvna-test:hang" => {
                        // Show that it is running (partial.txt), then stop
                        // listening to anything.
                        obs.on_text("hanging", 1);
                        std::thread::sleep(crate::observer::FLUSH_INTERVAL + Duration::from_millis(20));
                        obs.poll();
                        std::thread::sleep(Duration::from_secs(3600));
                    }
                    p if p.starts_with("nrvna-test:sleep:") => {
                        let ms: u64 = p["nrvna-test:sleep:".len()..]
                            .split(|c: char| !c.is_ascii_digit())
                            .next()
                            .and_then(|n| n.parse().ok())
                            .unwrap_or(0);
                        let until = std::time::Instant::now() + Duration::from_millis(ms);
                        while std::time::Instant::now() < until {
                            obs.poll();
                            if let Some(reason) = obs.should_stop() {
                                return Err(stopped(reason));
                            }
                            std::thread::sleep(Duration::from_millis(5));
                        }
                    }
                    _ => {}
                }
                obs.on_text(&t.prompt, 1);
                obs.poll();
                Ok(Output {
                    generated_tokens: 1,
                    prompt_tokens: 1,
                    text: t.prompt,
                    finish: Some(nrvna_engine::Finish::Eog),
                    ..Output::default()
                })
            }
            Request::EmbedMedia { text, media } => {
                echo_embedding(text.bytes().chain(media.iter().flat_map(|m| m.bytes.iter().copied())))
            }
            Request::Embed(s) => echo_embedding(s.bytes()),
            Request::Speech(_) => Err(RunError::Rejected(
                "the echo engine (a test double) does not synthesise speech; run nrvnad with an OuteTTS model and --vocoder FILE".into(),
            )),
        }
    }
}
