//! The Server: owns a workspace (flock, and no live daemon of either
//! implementation beside it), recovers it, loads the model, starts the
//! Scanner and the workers, and shuts them down on a signal, an engine
//! fault, or (with `--drain`) an idle queue. Shutdown is bounded by
//! `--stop-grace`: what is still running then stays in `processing/`.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use nrvna_core::fsio::{iso8601_utc, write_atomic};
use nrvna_core::lifecycle::{read_pid, unlocked_owner, DaemonLock};
use nrvna_core::wait::DirWaker;
use nrvna_core::workspace::READY_FILE;
use nrvna_core::{State, Workspace};
use serde_json::json;

use crate::config::Config;
use crate::engine::Inference;
use crate::pool::Pool;
use crate::processor::Processor;
use crate::scanner::Scanner;
use crate::signals::{self, Term};
use crate::space::SpaceGate;
use crate::worker::Worker;
use crate::{logging, recovery};

/// What the main thread waits for.
#[derive(Debug)]
pub enum Event {
    /// SIGINT or SIGTERM.
    Signal,
    /// The Scanner finished a pass over `input/ready/`.
    Scanned,
    /// A worker finished with a job (whatever the outcome).
    JobEnded { failed: bool },
    /// A worker met an engine fault.
    Fault(String),
    /// A worker thread ended.
    WorkerExited,
}

/// Exit code of an engine fault (a supervisor should restart the daemon).
pub const EXIT_FAULT: u8 = 3;

/// `nrvnad MODEL WS`: runs until a signal (or an idle queue with --drain).
pub fn serve(cfg: Config) -> Result<ExitCode> {
    let ws =
        Workspace::create(&cfg.workspace).with_context(|| format!("opening workspace {}", cfg.workspace.display()))?;
    let (tx, events) = mpsc::channel::<Event>();
    let term = Term::install(signals::to_events(tx.clone())).context("installing signal handlers")?;
    let Some(lock) = acquire(&ws, cfg.drain, &term)? else {
        tracing::info!("signal received while waiting for the workspace; exiting");
        return Ok(ExitCode::SUCCESS);
    };
    lock.write_pid(&ws)
        .with_context(|| format!("writing the pid into {}", ws.file(".nrvnad.lock").display()))?;
    let _ = std::fs::remove_file(ws.file(READY_FILE));

    let rec = recovery::recover(&ws, cfg.max_recovery_attempts);
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
    let inference = Inference::start(
        cfg.engine,
        &cfg.model,
        cfg.mmproj.as_deref(),
        cfg.engine_cfg.clone(),
        cfg.workers,
    )
    .map_err(anyhow::Error::msg)
    .inspect_err(|_| lock.clear_files(&ws))?;
    let inference = Arc::new(inference);
    tracing::info!("model ready in {:.2} s", t0.elapsed().as_secs_f64());
    let info = json!({
        "pid": std::process::id(),
        "model": cfg.model.display().to_string(),
        "mmproj": cfg.mmproj.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
        "vocoder": "",
        "workers": cfg.workers,
        "started_at": started_at,
        "model_name": inference.model_name(),
        "engine": cfg.engine.name(),
        "threads": cfg.engine_cfg.threads,
        "max_ctx": cfg.engine_cfg.max_ctx,
        "version": env!("CARGO_PKG_VERSION"),
    });
    lock.write_info(&ws, &info)?;

    let pool = Arc::new(Pool::new());
    let shutdown = Arc::new(AtomicBool::new(false));
    let space = Arc::new(SpaceGate::new(ws.root().to_owned(), cfg.min_free_bytes));
    let mut workers = Vec::new();
    for i in 0..cfg.workers {
        let w = Worker {
            pool: pool.clone(),
            processor: Processor::new(
                ws.clone(),
                inference.clone(),
                inference.runner(),
                shutdown.clone(),
                space.clone(),
            ),
            ws: ws.clone(),
            space: space.clone(),
            shutdown: shutdown.clone(),
            events: tx.clone(),
            max_recovery_attempts: cfg.max_recovery_attempts,
        };
        let h = std::thread::Builder::new()
            .name(format!("Worker-{i}"))
            .spawn(move || w.run())
            .context("starting a worker thread")?;
        workers.push(h);
    }
    let waker = DirWaker::arrivals(&[&ws.dir(State::Ready)], cfg.scan_interval);
    let poke = waker.poker();
    let scanner = Scanner::new(ws.clone(), pool.clone(), shutdown.clone(), tx.clone());
    let scanner = std::thread::Builder::new()
        .name("Scanner".into())
        .spawn(move || scanner.run(waker))
        .context("starting the scanner thread")?;
    drop(tx);

    write_atomic(ws.root(), READY_FILE, format!("{started_at}\n").as_bytes())?;
    tracing::info!(
        "nrvnad ready: {} with {} workers ({} engine) on {}",
        inference.model_name(),
        cfg.workers,
        cfg.engine.name(),
        ws.root().display()
    );

    let ended = wait_for_end(&cfg, &events, &pool, rec.failed as u64, &poke);
    logging::clear_bar();

    shutdown.store(true, Ordering::SeqCst);
    pool.close();
    let _ = poke.send(());
    let deadline = Instant::now() + cfg.stop_grace;
    let stopped = join_workers(&events, workers.len(), deadline)
        && join_by(scanner, deadline)
        && inference.shutdown_within(deadline.saturating_duration_since(Instant::now()));
    if !stopped {
        let left = ws.list(State::Processing).unwrap_or_default();
        tracing::error!(
            "still running {:.1} s after shutdown began (--stop-grace); exiting anyway: {} jobs stay in processing/ and are recovered at the next start{}",
            cfg.stop_grace.as_secs_f64(),
            left.len(),
            if left.is_empty() {
                String::new()
            } else {
                format!(" ({})", left.iter().map(|i| i.as_str()).collect::<Vec<_>>().join(", "))
            }
        );
        lock.clear_files(&ws);
        // Threads are stuck inside a job or the engine: leave without
        // running destructors that could wait on them.
        unsafe { libc::_exit(1) };
    }
    lock.clear_files(&ws);
    let code = match ended {
        End::Fault(why) => {
            tracing::error!("stopped after an engine fault ({why}); claimed jobs stay recoverable; restart the daemon");
            ExitCode::from(EXIT_FAULT)
        }
        End::Signal => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        End::Idle { failures } => {
            tracing::info!("stopped ({failures} jobs failed during this run)");
            if failures > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
    };
    Ok(code)
}

/// Why the serving loop ended.
enum End {
    Signal,
    Fault(String),
    Idle { failures: u64 },
}

/// The main thread's loop: blocks on events until a signal, a fault, or
/// (with --drain) an idle queue that a full scan confirmed.
fn wait_for_end(
    cfg: &Config,
    events: &Receiver<Event>,
    pool: &Pool,
    mut failures: u64,
    poke: &mpsc::Sender<()>,
) -> End {
    let bar = (cfg.drain && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(|| {
        let b = ProgressBar::new_spinner();
        b.set_style(
            ProgressStyle::with_template("{spinner} [drain {elapsed}] {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        b.enable_steady_tick(Duration::from_millis(200));
        logging::set_bar(b.clone());
        b
    });
    let (mut scans, mut done) = (0u64, 0u64);
    // (scans when the pool was first seen idle, second scan asked for)
    let mut idle_since: Option<(u64, bool)> = None;
    loop {
        let Ok(ev) = events.recv() else {
            return End::Fault("every thread of the daemon is gone".into());
        };
        match ev {
            Event::Signal => {
                tracing::info!("signal received: shutting down (a second signal exits at once)");
                return End::Signal;
            }
            Event::Fault(why) => return End::Fault(why),
            Event::Scanned => scans += 1,
            Event::JobEnded { failed } => {
                done += 1;
                failures += u64::from(failed);
            }
            Event::WorkerExited => {}
        }
        if let Some(b) = &bar {
            let (queued, running) = pool.counts();
            b.set_message(format!(
                "{queued} queued, {running} running, {} finished, {failures} failed",
                done
            ));
        }
        if !cfg.drain {
            continue;
        }
        if !pool.idle() {
            idle_since = None;
            continue;
        }
        match idle_since {
            None => {
                idle_since = Some((scans, false));
                let _ = poke.send(());
            }
            // A full scan began after the pool went idle and found nothing new.
            Some((s, _)) if scans >= s + 2 => {
                tracing::info!("drain: the queue is idle");
                return End::Idle { failures };
            }
            // Ask for the second scan now rather than at the next tick.
            Some((s, false)) if scans == s + 1 => {
                idle_since = Some((s, true));
                let _ = poke.send(());
            }
            Some(_) => {}
        }
    }
}

/// Waits until `n` workers reported their exit, or the deadline.
fn join_workers(events: &Receiver<Event>, n: usize, deadline: Instant) -> bool {
    let mut exited = 0;
    while exited < n {
        match events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Event::WorkerExited) => exited += 1,
            Ok(_) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => return false,
            Err(mpsc::RecvTimeoutError::Disconnected) => return true,
        }
    }
    true
}

/// Joins a thread if it ends before the deadline.
fn join_by(h: JoinHandle<()>, deadline: Instant) -> bool {
    while !h.is_finished() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if h.join().is_err() {
        tracing::error!("a daemon thread panicked while stopping");
    }
    true
}

/// Takes the workspace: the flock, and no live daemon without one (an
/// older C++ nrvnad) named in `.nrvnad.pid`. With `drain`, waits for the
/// current owner to exit. `Ok(None)`: a signal arrived while waiting.
fn acquire(ws: &Workspace, drain: bool, term: &Term) -> Result<Option<DaemonLock>> {
    let lock_path = ws.file(".nrvnad.lock");
    let mut announced = false;
    loop {
        let owner = match DaemonLock::acquire(ws, Duration::from_millis(300))
            .with_context(|| format!("locking {}", lock_path.display()))?
        {
            Some(l) => match unlocked_owner(ws) {
                None => return Ok(Some(l)),
                Some(pid) => format!(
                    "pid {pid}, an nrvnad that holds no workspace lock (an older C++ nrvnad; if that process does not serve this workspace, remove {})",
                    ws.file(".nrvnad.pid").display()
                ),
            },
            None => read_pid(ws)
                .map(|p| format!("pid {p}"))
                .unwrap_or_else(|| "unknown pid".into()),
        };
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
        if term.received() {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
