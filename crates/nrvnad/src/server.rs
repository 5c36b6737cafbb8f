//! The Server: owns a workspace (flock), recovers it, loads the model,
//! starts the Scanner and the workers, and shuts them down on a signal or,
//! with `--drain`, when the queue is idle.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use nrvna_core::fsio::{iso8601_utc, write_atomic};
use nrvna_core::lifecycle::{read_pid, DaemonLock};
use nrvna_core::wait::DirWaker;
use nrvna_core::workspace::{INFO_FILE, READY_FILE};
use nrvna_core::{State, Workspace};
use nrvna_engine::EngineConfig;
use serde_json::json;

use crate::cli::{EngineKind, ServeArgs};
use crate::engine::Inference;
use crate::pool::{Message, Pool};
use crate::processor::{Outcome, Processor};
use crate::{recovery, scanner, signals};

/// State shared by the Scanner, the workers and the main thread.
pub struct Shared {
    pub ws: Workspace,
    pub pool: Pool,
    pub inference: Inference,
    /// Set once everything is started.
    pub running: AtomicBool,
    /// Set when shutdown begins: no new claims, running jobs stop.
    pub shutdown: AtomicBool,
    pub failures: AtomicU64,
    pub scans: AtomicU64,
}

/// Resolves MODEL: a path, or a name under `$NRVNA_MODELS_DIR` or `./models`.
pub fn resolve_model(model: &str) -> Result<PathBuf> {
    let p = Path::new(model);
    if p.is_file() {
        return Ok(p.to_owned());
    }
    let dir = std::env::var_os("NRVNA_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("models"));
    for cand in [dir.join(model), dir.join(format!("{model}.gguf"))] {
        if cand.is_file() {
            return Ok(cand);
        }
    }
    bail!(
        "model {model:?} not found: it is not a file, and {} holds neither {model} nor {model}.gguf; \
         fetch the default model with scripts/fetch-model.sh, or pass the path of a .gguf file",
        dir.display()
    )
}

/// `nrvnad MODEL WS`: runs until a signal (or an idle queue with --drain).
pub fn serve(args: ServeArgs) -> Result<ExitCode> {
    let (Some(model), Some(ws_path)) = (args.model.as_deref(), args.workspace.as_ref()) else {
        bail!("usage: nrvnad MODEL WORKSPACE [--workers N] [--drain]; see nrvnad --help");
    };
    if args.workers == 0 || args.workers > 256 {
        bail!("--workers must be between 1 and 256 (got {})", args.workers);
    }
    let model_path = if args.engine == EngineKind::Echo {
        PathBuf::from(model)
    } else {
        resolve_model(model)?
    };
    let cfg = EngineConfig::from_env().map_err(anyhow::Error::msg)?;
    let ws = Workspace::create(ws_path).with_context(|| format!("opening workspace {}", ws_path.display()))?;

    signals::install();
    let lock = acquire(&ws, args.drain)?;
    let Some(lock) = lock else {
        tracing::info!("signal received while waiting for the workspace; exiting");
        return Ok(ExitCode::SUCCESS);
    };
    lock.write_pid(&ws)
        .with_context(|| format!("writing {}", ws.file(".nrvnad.pid").display()))?;
    let _ = std::fs::remove_file(ws.file(READY_FILE));

    let rec = recovery::recover(&ws, recovery::max_attempts());
    if rec != recovery::Recovered::default() {
        tracing::info!(
            "recovery: {} jobs back to input/ready/, {} failed at the attempt ceiling, {} staging leftovers removed",
            rec.requeued,
            rec.failed,
            rec.staging_removed
        );
    }

    let started_at = iso8601_utc(SystemTime::now());
    let t0 = Instant::now();
    let inference = Inference::start(args.engine, &model_path, cfg.clone(), args.workers)
        .map_err(anyhow::Error::msg)
        .inspect_err(|_| lock.clear_files(&ws))?;
    tracing::info!("model ready in {:.2} s", t0.elapsed().as_secs_f64());
    let info = json!({
        "pid": std::process::id(),
        "model": inference.model_name(),
        "model_path": model_path.display().to_string(),
        "workers": args.workers,
        "engine": format!("{:?}", args.engine).to_lowercase(),
        "threads": cfg.threads,
        "max_ctx": cfg.max_ctx,
        "started_at": started_at,
        "version": env!("CARGO_PKG_VERSION"),
    });
    write_atomic(ws.root(), INFO_FILE, format!("{info:#}\n").as_bytes())?;

    let shared = Arc::new(Shared {
        ws: ws.clone(),
        pool: Pool::new(),
        inference,
        running: AtomicBool::new(false),
        shutdown: AtomicBool::new(false),
        // Jobs failed by recovery (at the attempt ceiling) count for --drain's exit code.
        failures: AtomicU64::new(rec.failed as u64),
        scans: AtomicU64::new(0),
    });

    let mut workers = Vec::new();
    for i in 0..args.workers {
        let sh = shared.clone();
        let runner = shared.inference.runner();
        let h = std::thread::Builder::new()
            .name(format!("Worker-{i}"))
            .spawn(move || worker(sh, runner))
            .context("starting a worker thread")?;
        workers.push(h);
    }
    let ready_dir = ws.dir(State::Ready);
    let waker = DirWaker::arrivals(&[&ready_dir], scanner::SCAN_INTERVAL);
    let poke = waker.poker();
    let sh = shared.clone();
    let scanner = std::thread::Builder::new()
        .name("Scanner".into())
        .spawn(move || scanner::run(sh, waker))
        .context("starting the scanner thread")?;

    shared.running.store(true, Ordering::SeqCst);
    write_atomic(ws.root(), READY_FILE, format!("{started_at}\n").as_bytes())?;
    tracing::info!(
        "nrvnad ready: {} with {} workers ({} engine) on {}",
        shared.inference.model_name(),
        args.workers,
        format!("{:?}", args.engine).to_lowercase(),
        ws.root().display()
    );

    // The main thread waits for a signal, or for an idle queue with --drain.
    let mut idle_since_scan: Option<(u64, bool)> = None;
    let mut progress = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(DrainProgress::default);
    loop {
        std::thread::sleep(Duration::from_millis(10));
        if signals::received() {
            tracing::info!("signal received: shutting down (a second signal exits at once)");
            break;
        }
        if args.drain {
            if let Some(p) = progress.as_mut() {
                p.tick(&shared);
            }
            let scans = shared.scans.load(Ordering::SeqCst);
            if shared.pool.idle() {
                match idle_since_scan {
                    None => {
                        idle_since_scan = Some((scans, false));
                        let _ = poke.send(());
                    }
                    // A full scan began after the pool went idle and found nothing new.
                    Some((s, _)) if scans >= s + 2 => {
                        tracing::info!("drain: the queue is idle");
                        break;
                    }
                    // Ask for the second scan now rather than at the next tick.
                    Some((s, false)) if scans == s + 1 => {
                        idle_since_scan = Some((s, true));
                        let _ = poke.send(());
                    }
                    Some(_) => {}
                }
            } else {
                idle_since_scan = None;
            }
        }
    }

    if progress.is_some() {
        eprint!("\r\x1b[K");
    }
    shared.shutdown.store(true, Ordering::SeqCst);
    shared.running.store(false, Ordering::SeqCst);
    shared.pool.close();
    let _ = poke.send(());
    let _ = scanner.join();
    for w in workers {
        let _ = w.join();
    }
    shared.inference.shutdown();
    lock.clear_files(&ws);
    let failures = shared.failures.load(Ordering::SeqCst);
    tracing::info!("stopped ({failures} jobs failed during this run)");
    Ok(if args.drain && failures > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The `--drain` progress line on a terminal (never in pipes).
#[derive(Default)]
struct DrainProgress {
    last: Option<Instant>,
}

impl DrainProgress {
    fn tick(&mut self, shared: &Shared) {
        if self.last.is_some_and(|t| t.elapsed() < Duration::from_millis(250)) {
            return;
        }
        self.last = Some(Instant::now());
        let (queued, running) = shared.pool.counts();
        let count = |s| shared.ws.list(s).map(|v| v.len()).unwrap_or(0);
        eprint!(
            "\r\x1b[K[drain] {queued} queued, {running} running, {} done, {} failed",
            count(State::Done),
            count(State::Failed)
        );
    }
}

/// Takes the workspace lock; with `drain`, waits for the current owner to
/// exit. `Ok(None)`: a signal arrived while waiting.
fn acquire(ws: &Workspace, drain: bool) -> Result<Option<DaemonLock>> {
    let lock_path = ws.file(".nrvnad.lock");
    let mut announced = false;
    loop {
        if let Some(l) = DaemonLock::acquire(ws, Duration::from_millis(300))
            .with_context(|| format!("locking {}", lock_path.display()))?
        {
            return Ok(Some(l));
        }
        let owner = read_pid(ws)
            .map(|p| format!("pid {p}"))
            .unwrap_or_else(|| "unknown pid".into());
        if !drain {
            bail!(
                "another nrvnad ({owner}) owns {}; stop it with: nrvnad stop {}  (or add --drain to wait for it)",
                ws.root().display(),
                ws.root().display()
            );
        }
        if !announced {
            tracing::info!("waiting for the nrvnad that owns the workspace ({owner}) to exit");
            announced = true;
        }
        if signals::received() {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A worker: takes ids from the Pool and processes them until Quit.
fn worker(shared: Arc<Shared>, runner: Box<dyn nrvna_engine::Runner>) {
    let mut p = Processor::new(shared.clone(), runner);
    loop {
        match shared.pool.next() {
            Message::Quit => break,
            Message::Job(id) => {
                if shared.shutdown.load(Ordering::SeqCst) {
                    shared.pool.done(&id);
                    break;
                }
                let outcome = p.process(&id);
                if outcome == Outcome::Duplicate {
                    // Keep the id pending so the Scanner stops offering it.
                    shared.pool.park(&id);
                } else {
                    shared.pool.done(&id);
                }
            }
        }
    }
}
