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
use nrvna_core::wait::{DirWaker, Poker};
use nrvna_core::workspace::READY_FILE;
use nrvna_core::{State, Workspace};
use serde_json::json;

use crate::config::Config;
use crate::engine::Inference;
use crate::lease::{self, Lease, Membership, RecordInfo};
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
    /// A shared member's lease thread finished a heartbeat and reaping pass.
    Lease,
}

/// Exit code of an engine fault (a supervisor should restart the daemon).
pub const EXIT_FAULT: u8 = 3;

/// `nrvnad MODEL WS`: runs until a signal (or an idle queue with --drain).
pub fn serve(cfg: Config) -> Result<ExitCode> {
    let ws =
        Workspace::create(&cfg.workspace).with_context(|| format!("opening workspace {}", cfg.workspace.display()))?;
    let (tx, events) = mpsc::channel::<Event>();
    let term = Term::install(signals::to_events(tx.clone())).context("installing signal handlers")?;
    let lock = acquire(&ws, cfg.drain, &term, cfg.shared.is_some())?;
    let Some(lock) = lock else {
        tracing::info!("signal received while waiting for the workspace; exiting");
        return Ok(ExitCode::SUCCESS);
    };
    if cfg.spares {
        match nrvna_core::spare::enable(ws.root()) {
            Ok(0) => {}
            Ok(n) => tracing::info!("{n} spare files in {}", ws.file(nrvna_core::spare::SPARE_DIR).display()),
            Err(e) => tracing::warn!(
                "spare files are off: {}: {e}; every job frees an inode (fix that directory or pass --spares 0)",
                ws.file(nrvna_core::spare::SPARE_DIR).display()
            ),
        }
    }
    let membership = cfg.shared.map(|ttl| Arc::new(Membership::new(ttl)));
    let rec = match &membership {
        None => {
            lock.write_pid(&ws)
                .with_context(|| format!("writing the pid into {}", ws.file(".nrvnad.lock").display()))?;
            let _ = std::fs::remove_file(ws.file(READY_FILE));
            recovery::recover(&ws, cfg.max_recovery_attempts)
        }
        // Members never recover at start: jobs in processing/ may belong to
        // live members; the lease thread takes back those of dead ones.
        Some(_) => recovery::Recovered {
            staging_removed: recovery::clean_staging(&ws, recovery::STAGING_MAX_AGE),
            ..Default::default()
        },
    };
    if rec != recovery::Recovered::default() {
        tracing::info!(
            "recovery: {} jobs back to input/ready/, {} failed at the attempt ceiling, {} staging leftovers removed",
            rec.requeued,
            rec.failed,
            rec.staging_removed
        );
    }
    let mut serves: Vec<String> = [cfg.model.file_name(), cfg.model.file_stem()]
        .into_iter()
        .flatten()
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    let mut record = membership.as_ref().map(|m| {
        lease::record_for(
            m,
            RecordInfo {
                model: &cfg.model,
                serves: serves.clone(),
                engine: cfg.engine.name(),
                workers: cfg.workers,
            },
        )
    });
    if let (Some(m), Some(r)) = (&membership, &mut record) {
        r.extra.insert("state".into(), json!("starting"));
        nrvna_core::members::write_member(&ws, r).with_context(|| {
            format!(
                "writing this member's record into {}",
                nrvna_core::members::members_dir(&ws).display()
            )
        })?;
        tracing::info!(
            "joined {} as member {} (lease {:.1} s)",
            ws.root().display(),
            m.id,
            m.ttl.as_secs_f64()
        );
    }

    let started_at = iso8601_utc(SystemTime::now());
    let t0 = Instant::now();
    let leave = |ws: &Workspace| match &membership {
        Some(m) => {
            let _ = nrvna_core::members::remove_member(ws, &m.id);
        }
        None => lock.clear_files(ws),
    };
    let inference = Inference::start(
        cfg.engine,
        &cfg.model,
        cfg.mmproj.as_deref(),
        cfg.vocoder.as_deref(),
        cfg.speaker.as_deref(),
        cfg.engine_cfg.clone(),
        cfg.workers,
    )
    .inspect_err(|_| leave(&ws))?;
    let inference = Arc::new(inference);
    tracing::info!("model ready in {:.2} s", t0.elapsed().as_secs_f64());
    if !serves.iter().any(|n| n == inference.model_name()) && !inference.model_name().is_empty() {
        serves.push(inference.model_name().to_owned());
    }
    let info = json!({
        "pid": std::process::id(),
        "model": cfg.model.display().to_string(),
        "mmproj": cfg.mmproj.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
        "vocoder": cfg.vocoder.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
        "workers": cfg.workers,
        "started_at": started_at,
        "model_name": inference.model_name(),
        "engine": cfg.engine.name(),
        "threads": cfg.engine_cfg.threads,
        "max_ctx": cfg.engine_cfg.max_ctx,
        "version": env!("CARGO_PKG_VERSION"),
    });
    if membership.is_none() {
        lock.write_info(&ws, &info)?;
    }

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
            )
            .shared(membership.clone()),
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
    // The lease thread: started once the model is loaded, stopped only
    // after the workers, so that every job this member holds stays leased.
    let lease_stop = Arc::new(AtomicBool::new(false));
    let (lease_poke, lease_wake) = mpsc::channel::<()>();
    let lease_thread = match (&membership, record) {
        (Some(m), Some(mut r)) => {
            r.serves = serves.clone();
            r.extra.insert("state".into(), json!("ready"));
            r.extra.insert("model_name".into(), json!(inference.model_name()));
            let lease = Lease::new(ws.clone(), m.clone(), r, tx.clone(), cfg.max_recovery_attempts);
            let stop = lease_stop.clone();
            Some(
                std::thread::Builder::new()
                    .name("Lease".into())
                    .spawn(move || lease.run(stop, lease_wake))
                    .context("starting the lease thread")?,
            )
        }
        _ => None,
    };
    let network = nrvna_core::members::network_fs(ws.root());
    let waker = if cfg.poll || network.is_some() {
        tracing::info!(
            "finding jobs by scanning input/ready/ every {} ms{}",
            cfg.scan_interval.as_millis(),
            match network {
                Some(kind) => format!(" ({kind} is a network filesystem: inotify misses other hosts' writes)"),
                None => " (--poll)".to_owned(),
            }
        );
        DirWaker::polling(cfg.scan_interval)
    } else {
        DirWaker::arrivals(&[&ws.dir(State::Ready)], cfg.scan_interval)
    };
    let poke = waker.poker();
    let spread_seed = membership.as_ref().map(|m| {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        m.id.hash(&mut h);
        h.finish()
    });
    let scanner = Scanner::new(ws.clone(), pool.clone(), shutdown.clone(), tx.clone())
        .serving(serves.clone())
        .spreading(spread_seed);
    let scanner = std::thread::Builder::new()
        .name("Scanner".into())
        .spawn(move || scanner.run(waker))
        .context("starting the scanner thread")?;
    drop(tx);

    if membership.is_none() {
        write_atomic(ws.root(), READY_FILE, format!("{started_at}\n").as_bytes())?;
    }
    tracing::info!(
        "nrvnad ready: {} with {} workers ({} engine) on {}",
        inference.model_name(),
        cfg.workers,
        cfg.engine.name(),
        ws.root().display()
    );

    let unsettled = || {
        membership
            .as_ref()
            .is_some_and(|m| m.unsettled.load(Ordering::SeqCst) > 0)
    };
    let ended = wait_for_end(&cfg, &events, &pool, rec.failed as u64, &poke, &unsettled);
    logging::clear_bar();

    shutdown.store(true, Ordering::SeqCst);
    pool.close();
    poke.poke();
    let deadline = Instant::now() + cfg.stop_grace;
    let stopped = join_workers(&events, workers.len(), deadline)
        && join_by(scanner, deadline)
        && inference.shutdown_within(deadline.saturating_duration_since(Instant::now()));
    if let Some(m) = &membership {
        lease_stop.store(true, Ordering::SeqCst);
        let _ = lease_poke.send(());
        if let Some(h) = lease_thread {
            if stopped {
                let _ = join_by(h, Instant::now() + Duration::from_secs(5));
            }
        }
        tracing::info!(
            "member {}: claimed {} jobs, lost {} claim races, {} results fenced, {} jobs recovered from other members",
            m.id,
            m.claimed.load(Ordering::Relaxed),
            m.lost_races.load(Ordering::Relaxed),
            m.fenced.load(Ordering::Relaxed),
            m.recovered.load(Ordering::Relaxed)
        );
    }
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
        leave(&ws);
        // Threads are stuck inside a job or the engine: leave without
        // running destructors that could wait on them.
        unsafe { libc::_exit(1) };
    }
    leave(&ws);
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
    poke: &Poker,
    unsettled: &dyn Fn() -> bool,
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
            Event::WorkerExited | Event::Lease => {}
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
        // A shared member also waits for jobs whose holders are not yet
        // known to be alive (it may have to take them back).
        if !pool.idle() || unsettled() {
            idle_since = None;
            continue;
        }
        match idle_since {
            None => {
                idle_since = Some((scans, false));
                poke.poke();
            }
            // A full scan began after the pool went idle and found nothing new.
            Some((s, _)) if scans >= s + 2 => {
                tracing::info!("drain: the queue is idle");
                return End::Idle { failures };
            }
            // Ask for the second scan now rather than at the next tick.
            Some((s, false)) if scans == s + 1 => {
                idle_since = Some((s, true));
                poke.poke();
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

/// Takes the workspace. Exclusive: the flock, no live daemon without one
/// (an older C++ nrvnad) named in `.nrvnad.pid`, and no live shared
/// members. Shared (`--shared`): a shared flock (refused while an exclusive
/// daemon holds the lock) and no live lock-less C++ daemon. With `drain`,
/// waits for the current owner to exit. `Ok(None)`: a signal arrived while
/// waiting.
fn acquire(ws: &Workspace, drain: bool, term: &Term, shared: bool) -> Result<Option<DaemonLock>> {
    let mut announced = false;
    loop {
        let owner = match try_take(ws, shared)? {
            Ok(l) => return Ok(Some(l)),
            Err(owner) => owner,
        };
        let root = ws.root().display();
        if !drain && shared {
            bail!("an exclusive nrvnad ({owner}) owns {root}: shared members cannot join it; stop it with: nrvnad stop {root}, or restart it with --shared  (or add --drain to wait for it)");
        }
        if !drain {
            bail!("another nrvnad ({owner}) owns {root}; stop it with: nrvnad stop {root}  (or add --drain to wait for it)");
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

/// One try at the workspace: the lock, or who holds it.
fn try_take(ws: &Workspace, shared: bool) -> Result<std::result::Result<DaemonLock, String>> {
    let lock_path = ws.file(".nrvnad.lock");
    let patience = Duration::from_millis(300);
    let taken = if shared {
        DaemonLock::acquire_shared(ws, patience)
    } else {
        DaemonLock::acquire(ws, patience)
    }
    .with_context(|| format!("locking {}", lock_path.display()))?;
    let root = ws.root().display();
    let Some(lock) = taken else {
        let members = nrvna_core::members::list_members(ws);
        return Ok(Err(match members.first() {
            // A shared probe of the lock succeeds while only members hold it.
            Some(m) if !shared && !nrvna_core::lifecycle::lock_held(ws) => format!(
                "shared members, e.g. member {} on host {}; add --shared to join them, or stop them with: nrvnad stop {root} --all",
                m.member, m.host
            ),
            _ => read_pid(ws)
                .map(|p| format!("pid {p}"))
                .unwrap_or_else(|| "unknown pid".into()),
        }));
    };
    if let Some(pid) = unlocked_owner(ws) {
        return Ok(Err(format!(
            "pid {pid}, an nrvnad that holds no workspace lock (an older C++ nrvnad; if that process does not serve this workspace, remove {})",
            ws.file(".nrvnad.pid").display()
        )));
    }
    if !shared {
        if let Some(m) = lease::live_member_among_records(ws) {
            bail!(
                "shared members serve {root} (member {} on host {}, heartbeat moving): an exclusive nrvnad cannot start beside them; add --shared to join them, or stop them with: nrvnad stop {root} --all",
                m.member,
                m.host
            );
        }
    }
    Ok(Ok(lock))
}
