//! The Server: owns a workspace (flock, and no live daemon of either
//! implementation beside it), recovers it, loads the (default) model, starts the
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
use nrvna_core::lifecycle::{read_pid, unlocked_owner, DaemonLock};
use nrvna_core::members::MemberState;
use nrvna_core::time::iso8601_utc;
use nrvna_core::wait::{DirWaker, Poker};
use nrvna_core::workspace::{LOCK_FILE, READY_FILE};
use nrvna_core::{State, Workspace};
use serde_json::json;

use crate::config::Config;
use crate::events::Event;
use crate::lease::{self, Lease, RecordInfo};
use crate::membership::Membership;
use crate::metrics::{self, JobMetrics};
use crate::models::loader::{LoadSettings, Loader};
use crate::pool::Pool;
use crate::processor::Processor;
use crate::publish::InfoPublisher;
use crate::scanner::Scanner;
use crate::signals::{self, Term};
use crate::space::SpaceGate;
use crate::worker::Worker;
use crate::{logging, recovery};

/// Exit code of an engine fault (a supervisor should restart the daemon).
pub const EXIT_FAULT: u8 = 3;

/// The workspace writing into spare files kept in `WS/.nrvna-spare/`
/// (adopting what is there); unchanged, with a warning, when that
/// directory cannot be used.
fn with_spares(ws: Workspace) -> Workspace {
    let dir = ws.file(nrvna_core::spare::SPARE_DIR);
    match nrvna_core::spare::Spares::open_in(ws.root()) {
        Ok(s) => {
            if !s.is_empty() {
                tracing::info!("{} spare files in {}", s.len(), dir.display());
            }
            let io = ws.io().clone().with_spares(Arc::new(s));
            ws.with_io(io)
        }
        Err(e) => {
            tracing::warn!(
                "spare files are off: {}: {e}; every job frees an inode (fix that directory or pass --spares 0)",
                dir.display()
            );
            ws
        }
    }
}

/// `nrvnad MODEL WS`: runs until a signal (or an idle queue with --drain).
pub fn serve(cfg: Config) -> Result<ExitCode> {
    let Some(mut daemon) = start(cfg)? else {
        tracing::info!("signal received while waiting for the workspace; exiting");
        return Ok(ExitCode::SUCCESS);
    };
    let end = daemon.wait();
    let deadline = Instant::now() + daemon.cfg.stop_grace;
    Ok(daemon.stop(end, deadline))
}

/// What this daemon holds in the workspace: the lock, and as a member of a
/// shared workspace its membership (record, claims).
struct Seat {
    lock: DaemonLock,
    membership: Option<Arc<Membership>>,
}

impl Seat {
    /// Gives the workspace back: the lifecycle files, or the member record.
    fn leave(&self, ws: &Workspace) {
        match &self.membership {
            Some(m) => {
                let _ = nrvna_core::members::remove_member(ws, &m.id);
            }
            None => self.lock.clear_files(ws),
        }
    }
}

/// A started daemon: its threads run until [`Running::wait`] returns and
/// [`Running::stop`] stops them.
pub struct Running {
    cfg: Config,
    ws: Workspace,
    seat: Seat,
    /// Every served model, loaded on demand.
    loader: Arc<Loader>,
    /// Keeps `.nrvnad.info` current (an exclusive daemon).
    info: Option<InfoPublisher>,
    events: Receiver<Event>,
    pool: Arc<Pool>,
    shutdown: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    scanner: Joinable,
    /// Wakes the Scanner for a pass now.
    poke: Poker,
    lease: Option<LeaseThread>,
    /// The retention thread, when a --retain-* policy is set.
    retention: Option<LeaseThread>,
    /// Jobs failed by recovery at start (they count as failures of a drain).
    failed_at_start: u64,
    /// The `--metrics` responder, stopped with the daemon.
    metrics: Option<metrics::Server>,
    _term: Term,
}

/// A periodic thread (lease, retention) and what stops it.
struct LeaseThread {
    stop: Arc<AtomicBool>,
    wake: mpsc::Sender<()>,
    handle: Joinable,
}

/// Takes the workspace, recovers it, loads the model and starts the
/// threads. `Ok(None)`: a signal arrived while waiting for the workspace.
pub fn start(cfg: Config) -> Result<Option<Running>> {
    let ws = Workspace::create(&cfg.workspace)
        .with_context(|| format!("opening workspace {}", cfg.workspace.display()))?
        .with_settings(cfg.settings.clone());
    let (tx, events) = mpsc::channel::<Event>();
    let term = Term::install(signals::to_events(tx.clone())).context("installing signal handlers")?;
    let Some(lock) = acquire(&ws, cfg.drain, &term, cfg.shared.is_some())? else {
        return Ok(None);
    };
    let ws = if cfg.spares { with_spares(ws) } else { ws };
    let listener = cfg
        .metrics
        .map(|addr| {
            std::net::TcpListener::bind(addr).with_context(|| {
                format!("serving metrics on {addr} (--metrics): pick a free address, or leave --metrics off")
            })
        })
        .transpose()?;
    let seat = Seat {
        lock,
        membership: cfg.shared.map(|ttl| Arc::new(Membership::new(ttl))),
    };
    let jobs = Arc::new(JobMetrics::default());
    let failed_at_start = take_over(&cfg, &ws, &seat, &jobs)?;
    crate::retention::recover_trash(&ws);
    if let Some(n) = cfg.max_queued {
        let limit = (n > 0).then_some(n);
        nrvna_core::limits::set_max_queued(&ws, limit).with_context(|| {
            format!(
                "recording --max-queued in {}",
                ws.file(nrvna_core::limits::LIMITS_FILE).display()
            )
        })?;
        match limit {
            Some(n) => tracing::info!("queue limit: at most {n} queued jobs (submitters beyond it are refused)"),
            None => tracing::info!("queue limit removed"),
        }
    }
    let registry = Arc::new(cfg.registry.clone());
    let mut record = member_record(&cfg, &ws, &seat, &registry.all_names())?;

    let started_at = iso8601_utc(SystemTime::now());
    let pool = Arc::new(Pool::for_models(registry.models.len(), cfg.max_wait));
    let loader = Arc::new(
        Loader::new(
            registry.clone(),
            LoadSettings {
                engine: cfg.engine,
                engine_cfg: cfg.engine_cfg.clone(),
                workers: cfg.workers,
                speaker: cfg.speaker.clone(),
                max_loaded: cfg.max_loaded,
                budget: cfg.memory_budget,
            },
            pool.clone(),
        )
        .telling(tx.clone()),
    );
    if registry.models.len() > 1 {
        tracing::info!(
            "serving {} models: {}; default {}{}; at most {} loaded{}, switching after --max-wait {:.1} s",
            registry.models.len(),
            registry
                .models
                .iter()
                .map(|m| format!("{} (~{})", m.id, crate::models::human_bytes(m.bytes)))
                .collect::<Vec<_>>()
                .join(", "),
            registry.models[registry.default].id,
            if cfg.default_named {
                ""
            } else {
                " (the first; name another with --default-model)"
            },
            cfg.max_loaded,
            cfg.memory_budget
                .map(|b| format!(" within {}", crate::models::human_bytes(b)))
                .unwrap_or_default(),
            cfg.max_wait.as_secs_f64()
        );
    }
    let t0 = Instant::now();
    let (model_name, engine_stats, workers) = loader.preload(registry.default).inspect_err(|_| seat.leave(&ws))?;
    // `--workers auto`: the default model's engine chose how many.
    let mut cfg = cfg;
    cfg.workers = workers;
    tracing::info!("model ready in {:.2} s", t0.elapsed().as_secs_f64());
    let info = match seat.membership {
        None => {
            let mut p = InfoPublisher::new(info(&cfg, &model_name, &started_at));
            p.publish(&seat.lock, &ws, &loader, &pool);
            Some(p)
        }
        Some(_) => None,
    };

    // Webhooks: a thread that delivers while it holds the workspace's
    // deliver.lock (nrvna-hooks); it ends with the process.
    if let Some(hooks) = &cfg.webhooks {
        nrvna_hooks::start(&ws, hooks.clone()).context("starting webhook delivery")?;
    }

    let shutdown = Arc::new(AtomicBool::new(false));
    let workers = spawn_workers(&cfg, &ws, &seat, &loader, &pool, &shutdown, &tx, &jobs)?;
    // The lease thread: started once the model is loaded, stopped only
    // after the workers, so that every job this member holds stays leased.
    let lease = match (&seat.membership, record.as_mut()) {
        (Some(m), Some(r)) => {
            r.serves = registry.all_names();
            r.state = Some(MemberState::Ready);
            r.workers = cfg.workers;
            r.extra.insert("model_name".into(), json!(model_name));
            if registry.models.len() > 1 {
                r.extra.insert(
                    nrvna_core::members::MODELS_KEY.into(),
                    json!(registry
                        .models
                        .iter()
                        .map(|m| m.path.display().to_string())
                        .collect::<Vec<_>>()),
                );
            }
            Some(spawn_lease(&cfg, &ws, m, r.clone(), &tx)?)
        }
        _ => None,
    };
    let retention = (!cfg.retention.keeps_all())
        .then(|| spawn_retention(&cfg, &ws))
        .transpose()?;
    let (scanner, poke) = spawn_scanner(&cfg, &ws, &seat, &pool, &shutdown, &tx, registry.clone())?;
    drop(tx);
    let metrics = match listener {
        None => None,
        Some(listener) => {
            let src = metrics::Sources {
                tally: nrvna_core::tally::Tally::start(&ws)
                    .inspect_err(|e| tracing::warn!("metrics: no workspace job counts (nrvna_jobs): {e}"))
                    .ok(),
                pool: pool.clone(),
                model: model_name.clone(),
                engine: engine_stats,
                membership: seat.membership.clone(),
                jobs,
            };
            let s = metrics::Server::start(listener, metrics::registry(src)).context("starting the metrics thread")?;
            tracing::info!("metrics at http://{}/metrics", s.addr());
            Some(s)
        }
    };

    if seat.membership.is_none() {
        ws.io()
            .write_atomic(ws.root(), READY_FILE, format!("{started_at}\n").as_bytes())?;
    }
    tracing::info!(
        "nrvnad ready: {} with {} workers ({} engine) on {}",
        model_name,
        cfg.workers,
        cfg.engine.name(),
        ws.root().display()
    );
    Ok(Some(Running {
        cfg,
        ws,
        seat,
        loader,
        info,
        events,
        pool,
        shutdown,
        workers,
        scanner,
        poke,
        lease,
        retention,
        failed_at_start,
        metrics,
        _term: term,
    }))
}

/// Recovers what an earlier daemon left (an exclusive daemon only: jobs in
/// processing/ of a shared workspace may belong to live members, and the
/// lease thread takes back those of dead ones). Returns the jobs failed at
/// the attempt ceiling.
fn take_over(cfg: &Config, ws: &Workspace, seat: &Seat, jobs: &JobMetrics) -> Result<u64> {
    let rec = match &seat.membership {
        None => {
            seat.lock
                .write_pid(ws)
                .with_context(|| format!("writing the pid into {}", ws.file(LOCK_FILE).display()))?;
            let _ = std::fs::remove_file(ws.file(READY_FILE));
            recovery::recover(ws, cfg.max_recovery_attempts)
        }
        Some(_) => recovery::Recovered {
            staging_removed: recovery::clean_staging(ws, recovery::STAGING_MAX_AGE),
            ..Default::default()
        },
    };
    jobs.recovered.fetch_add(rec.requeued as u64, Ordering::Relaxed);
    for _ in 0..rec.failed {
        jobs.failed(metrics::Reason::RecoveryCeiling);
    }
    if rec != recovery::Recovered::default() {
        tracing::info!(
            "recovery: {} jobs back to input/ready/, {} failed at the attempt ceiling, {} staging leftovers removed",
            rec.requeued,
            rec.failed,
            rec.staging_removed
        );
    }
    Ok(rec.failed as u64)
}

/// A member's first record (state `starting`), written before the model
/// loads; `None` for an exclusive daemon.
fn member_record(
    cfg: &Config,
    ws: &Workspace,
    seat: &Seat,
    serves: &[String],
) -> Result<Option<nrvna_core::members::MemberRecord>> {
    let Some(m) = &seat.membership else {
        return Ok(None);
    };
    let mut r = lease::record_for(
        m,
        RecordInfo {
            model: &cfg.model,
            serves: serves.to_vec(),
            engine: cfg.engine.name(),
            workers: cfg.workers,
        },
    );
    r.state = Some(MemberState::Starting);
    nrvna_core::members::write_member(ws, &r).with_context(|| {
        format!(
            "writing this member's record into {}",
            nrvna_core::members::members_dir(ws).display()
        )
    })?;
    tracing::info!(
        "joined {} as member {} (lease {:.1} s)",
        ws.root().display(),
        m.id,
        m.ttl.as_secs_f64()
    );
    Ok(Some(r))
}

/// The fixed keys of an exclusive daemon's `.nrvnad.info` record (the
/// default model's; [`InfoPublisher`] adds every model's state).
fn info(cfg: &Config, model_name: &str, started_at: &str) -> serde_json::Value {
    json!({
        "pid": std::process::id(),
        "model": cfg.model.display().to_string(),
        "mmproj": cfg.mmproj.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
        "vocoder": cfg.vocoder.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
        "workers": cfg.workers,
        "started_at": started_at,
        "model_name": model_name,
        "max_loaded": cfg.max_loaded,
        "memory_budget": cfg.memory_budget,
        "max_wait_s": cfg.max_wait.as_secs_f64(),
        "engine": cfg.engine.name(),
        "threads": cfg.engine_cfg.threads,
        "max_ctx": cfg.engine_cfg.max_ctx,
        "version": env!("CARGO_PKG_VERSION"),
    })
}

/// Starts `Worker-0..N-1`, each with its own Processor and Runner.
// Each argument is one handle the workers share; a struct of them would
// exist for this call alone.
#[allow(clippy::too_many_arguments)]
fn spawn_workers(
    cfg: &Config,
    ws: &Workspace,
    seat: &Seat,
    loader: &Arc<Loader>,
    pool: &Arc<Pool>,
    shutdown: &Arc<AtomicBool>,
    tx: &mpsc::Sender<Event>,
    jobs: &Arc<JobMetrics>,
) -> Result<Vec<JoinHandle<()>>> {
    let space = Arc::new(SpaceGate::new(ws.root().to_owned(), cfg.min_free_bytes));
    (0..cfg.workers)
        .map(|i| {
            let w = Worker {
                pool: pool.clone(),
                processor: Processor::new(ws.clone(), shutdown.clone(), space.clone())
                    .shared(seat.membership.clone())
                    .measured(jobs.clone()),
                loader: loader.clone(),
                ws: ws.clone(),
                space: space.clone(),
                shutdown: shutdown.clone(),
                events: tx.clone(),
                max_recovery_attempts: cfg.max_recovery_attempts,
                metrics: jobs.clone(),
            };
            std::thread::Builder::new()
                .name(format!("Worker-{i}"))
                .spawn(move || w.run())
                .context("starting a worker thread")
        })
        .collect()
}

/// Starts a member's lease thread (heartbeat, stop requests, reaping).
fn spawn_lease(
    cfg: &Config,
    ws: &Workspace,
    m: &Arc<Membership>,
    record: nrvna_core::members::MemberRecord,
    tx: &mpsc::Sender<Event>,
) -> Result<LeaseThread> {
    let stop = Arc::new(AtomicBool::new(false));
    let (wake, woken) = mpsc::channel::<()>();
    let lease = Lease::new(ws.clone(), m.clone(), record, tx.clone(), cfg.max_recovery_attempts);
    let flag = stop.clone();
    let handle = Joinable::spawn("Lease", move || lease.run(flag, woken)).context("starting the lease thread")?;
    Ok(LeaseThread { stop, wake, handle })
}

/// Starts the retention thread (prune rounds of the --retain-* policy).
fn spawn_retention(cfg: &Config, ws: &Workspace) -> Result<LeaseThread> {
    let stop = Arc::new(AtomicBool::new(false));
    let (wake, woken) = mpsc::channel::<()>();
    let r = crate::retention::Retention {
        ws: ws.clone(),
        policy: cfg.retention,
        interval: cfg.retain_interval,
    };
    let flag = stop.clone();
    let handle = Joinable::spawn("Retention", move || r.run(flag, woken)).context("starting the retention thread")?;
    Ok(LeaseThread { stop, wake, handle })
}

/// Starts the Scanner, woken by inotify on `input/ready/` or, on network
/// filesystems and with --poll, by its scan interval.
fn spawn_scanner(
    cfg: &Config,
    ws: &Workspace,
    seat: &Seat,
    pool: &Arc<Pool>,
    shutdown: &Arc<AtomicBool>,
    tx: &mpsc::Sender<Event>,
    registry: Arc<crate::models::Registry>,
) -> Result<(Joinable, Poker)> {
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
    let spread_seed = seat.membership.as_ref().map(|m| {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        m.id.hash(&mut h);
        h.finish()
    });
    let scanner = Scanner::new(ws.clone(), pool.clone(), shutdown.clone(), tx.clone())
        .serving(registry, seat.membership.is_some())
        .spreading(spread_seed);
    let handle = Joinable::spawn("Scanner", move || scanner.run(waker)).context("starting the scanner thread")?;
    Ok((handle, poke))
}

impl Running {
    /// Blocks until a signal, an engine fault, or (with --drain) an idle
    /// queue.
    pub fn wait(&mut self) -> End {
        let membership = self.seat.membership.clone();
        let unsettled = move || {
            membership
                .as_ref()
                .is_some_and(|m| m.unsettled.load(Ordering::SeqCst) > 0)
        };
        let (loader, pool, ws, lock) = (&self.loader, &self.pool, &self.ws, &self.seat.lock);
        let idle_unload = self.cfg.idle_unload;
        let info = &mut self.info;
        // On every event (a scan at least every scan interval): unload idle
        // models, publish the models' state.
        let mut tick = move || {
            if let Some(d) = idle_unload {
                loader.unload_idle(d);
            }
            if let Some(p) = info.as_mut() {
                p.publish(lock, ws, loader, pool);
            }
        };
        let end = wait_for_end(
            &self.cfg,
            &self.events,
            &self.pool,
            self.failed_at_start,
            &self.poke,
            &unsettled,
            &mut tick,
        );
        logging::clear_bar();
        end
    }

    /// Stops the threads (by `deadline`), gives the workspace back, and
    /// says how the daemon ended. Past the deadline, what still runs stays
    /// in processing/ and the process exits at once.
    pub fn stop(self, end: End, deadline: Instant) -> ExitCode {
        self.shutdown.store(true, Ordering::SeqCst);
        self.pool.close();
        self.poke.poke();
        // Retention stops between two steps of a round: a step is a few
        // hundred renames and deletions.
        let retention_stopped = match self.retention {
            Some(r) => {
                r.stop.store(true, Ordering::SeqCst);
                let _ = r.wake.send(());
                r.handle.join_by(deadline)
            }
            None => true,
        };
        let stopped = retention_stopped
            && join_workers(&self.events, self.workers.len(), deadline)
            && self.scanner.join_by(deadline)
            && self
                .loader
                .shutdown_within(deadline.saturating_duration_since(Instant::now()));
        if let (Some(m), Some(l)) = (&self.seat.membership, self.lease) {
            l.stop.store(true, Ordering::SeqCst);
            let _ = l.wake.send(());
            if stopped {
                let _ = l.handle.join_by(Instant::now() + Duration::from_secs(5));
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
            let left = self.ws.list(State::Processing).unwrap_or_default();
            tracing::error!(
                "still running {:.1} s after shutdown began (--stop-grace); exiting anyway: {} jobs stay in processing/ and are recovered at the next start{}",
                self.cfg.stop_grace.as_secs_f64(),
                left.len(),
                if left.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", left.iter().map(|i| i.as_str()).collect::<Vec<_>>().join(", "))
                }
            );
            self.seat.leave(&self.ws);
            // Threads are stuck inside a job or llama.cpp: leave without
            // running destructors that could wait on them.
            // SAFETY: _exit ends the process at once; nothing runs after it.
            unsafe { libc::_exit(1) };
        }
        drop(self.metrics);
        self.seat.leave(&self.ws);
        exit_code(end)
    }
}

/// The exit code (and last log line) of a daemon that stopped cleanly.
fn exit_code(end: End) -> ExitCode {
    match end {
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
    }
}

/// Why the serving loop ended.
#[derive(Debug)]
pub enum End {
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
    tick: &mut dyn FnMut(),
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
            Event::WorkerExited | Event::Lease | Event::Models | Event::Freed => {}
        }
        tick();
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
                // The events read so far may be older than the pool's idle
                // state: a job that ended since has its JobEnded waiting in
                // the channel (a worker sends it before the pool counts the
                // job finished). Take them before deciding.
                while let Ok(ev) = events.try_recv() {
                    match ev {
                        Event::Signal => return End::Signal,
                        Event::Fault(why) => return End::Fault(why),
                        Event::JobEnded { failed } => {
                            done += 1;
                            failures += u64::from(failed);
                        }
                        Event::Scanned => scans += 1,
                        Event::WorkerExited | Event::Lease | Event::Models | Event::Freed => {}
                    }
                }
                if pool.idle() && !unsettled() {
                    tracing::info!("drain: the queue is idle");
                    return End::Idle { failures };
                }
                idle_since = None;
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

/// A thread whose end can be awaited until a deadline, without polling:
/// it holds the sending end of `ended`, which is dropped when the thread
/// returns or unwinds.
struct Joinable {
    handle: JoinHandle<()>,
    ended: Receiver<()>,
}

impl Joinable {
    fn spawn(name: &str, f: impl FnOnce() + Send + 'static) -> std::io::Result<Joinable> {
        let (tx, ended) = mpsc::channel::<()>();
        let handle = std::thread::Builder::new().name(name.into()).spawn(move || {
            let _ended = tx;
            f()
        })?;
        Ok(Joinable { handle, ended })
    }

    /// Joins the thread if it ends before the deadline.
    fn join_by(self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        if let Err(mpsc::RecvTimeoutError::Timeout) = self.ended.recv_timeout(left) {
            return false;
        }
        if self.handle.join().is_err() {
            tracing::error!("a daemon thread panicked while stopping");
        }
        true
    }
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
    let lock_path = ws.file(LOCK_FILE);
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
            ws.file(nrvna_core::workspace::PID_FILE).display()
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
