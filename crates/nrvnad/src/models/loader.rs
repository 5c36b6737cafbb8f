//! Loads models on demand within `--max-loaded` and `--memory-budget`:
//! a worker asks for the model of the job it took ([`Loader::acquire`]);
//! a model not loaded is loaded, after the least recently used idle models
//! are unloaded to make room; when every loaded model is still running
//! jobs, the worker waits until one finishes (so a switch lets in-flight
//! jobs finish, unloads, then loads). `--idle-unload` unloads a model no
//! job has used for that long ([`Loader::unload_idle`]).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nrvna_engine::EngineConfig;

use super::{human_bytes, Registry};
use crate::cli::EngineKind;
use crate::engine::Inference;
use crate::events::Event;
use crate::pool::Pool;

/// How models are started, and the limits they live within.
#[derive(Clone, Debug)]
pub struct LoadSettings {
    pub engine: EngineKind,
    pub engine_cfg: EngineConfig,
    pub workers: u32,
    /// --speaker, for OuteTTS models.
    pub speaker: Option<PathBuf>,
    /// --max-loaded (at least 1).
    pub max_loaded: usize,
    /// --memory-budget in bytes.
    pub budget: Option<u64>,
}

/// One model's place in the loader.
#[derive(Default)]
struct Slot {
    inference: Option<Arc<Inference>>,
    loading: bool,
    /// Being unloaded: its memory still counts until that ends.
    unloading: bool,
    /// Jobs running on it now.
    in_use: usize,
    last_used: Option<Instant>,
    loads: u64,
}

/// What [`Loader::acquire`] could not do.
#[derive(Debug, PartialEq)]
pub enum Refused {
    /// The daemon is stopping: leave the job queued.
    Stopping,
    /// Loading failed: the job fails with this reason.
    Failed(String),
}

/// The loader: one mutex around the slots, a condition variable for
/// workers waiting for room.
pub struct Loader {
    registry: Arc<Registry>,
    settings: LoadSettings,
    pool: Arc<Pool>,
    slots: Mutex<Vec<Slot>>,
    cv: Condvar,
    /// Told after every load and unload.
    events: Option<Mutex<Sender<Event>>>,
}

/// A model held for one job: while it lives the model is not unloaded.
pub struct InUse<'a> {
    loader: &'a Loader,
    model: usize,
    inference: Option<Arc<Inference>>,
}

impl InUse<'_> {
    pub fn inference(&self) -> &Arc<Inference> {
        self.inference.as_ref().expect("held until dropped")
    }
}

impl Drop for InUse<'_> {
    fn drop(&mut self) {
        // Our reference goes first, so that an unload drops the last one.
        self.inference = None;
        let mut s = self.loader.lock();
        let slot = &mut s[self.model];
        slot.in_use = slot.in_use.saturating_sub(1);
        slot.last_used = Some(Instant::now());
        drop(s);
        self.loader.cv.notify_all();
    }
}

/// One model's state for status displays.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelState {
    pub loaded: bool,
    pub running: usize,
    pub loads: u64,
}

impl Loader {
    pub fn new(registry: Arc<Registry>, settings: LoadSettings, pool: Arc<Pool>) -> Loader {
        let n = registry.models.len();
        Loader {
            registry,
            settings,
            pool,
            slots: Mutex::new((0..n).map(|_| Slot::default()).collect()),
            cv: Condvar::new(),
            events: None,
        }
    }

    /// Sends [`Event::Models`] to `tx` after every load and unload.
    pub fn telling(mut self, tx: Sender<Event>) -> Loader {
        self.events = Some(Mutex::new(tx));
        self
    }

    fn changed(&self) {
        if let Some(tx) = &self.events {
            let _ = tx.lock().unwrap_or_else(|e| e.into_inner()).send(Event::Models);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Whether `m` fits beside the models loaded or loading now.
    fn fits(&self, s: &[Slot], m: usize) -> bool {
        let held: Vec<usize> = (0..s.len())
            .filter(|&i| s[i].inference.is_some() || s[i].loading || s[i].unloading)
            .collect();
        if held.is_empty() {
            // Alone it always loads (a budget below one model would serve nothing).
            return true;
        }
        if held.len() >= self.settings.max_loaded {
            return false;
        }
        match self.settings.budget {
            None => true,
            Some(b) => {
                let used: u64 = held.iter().map(|&i| self.registry.models[i].bytes).sum();
                used + self.registry.models[m].bytes <= b
            }
        }
    }

    /// The least recently used loaded model that runs no job, but `m`.
    fn idle_victim(s: &[Slot], m: usize) -> Option<usize> {
        (0..s.len())
            .filter(|&i| i != m && s[i].inference.is_some() && s[i].in_use == 0 && !s[i].loading)
            .min_by_key(|&i| s[i].last_used)
    }

    /// The model `m` for one job, loaded if need be. Waits while every
    /// loaded model runs jobs and there is no room for `m`.
    pub fn acquire(&self, m: usize, shutdown: &AtomicBool) -> Result<InUse<'_>, Refused> {
        let mut s = self.lock();
        loop {
            if shutdown.load(Ordering::SeqCst) {
                return Err(Refused::Stopping);
            }
            if let Some(inf) = &s[m].inference {
                let inference = Some(inf.clone());
                s[m].in_use += 1;
                s[m].last_used = Some(Instant::now());
                return Ok(InUse {
                    loader: self,
                    model: m,
                    inference,
                });
            }
            if s[m].loading {
                s = self.wait(s);
                continue;
            }
            if self.fits(&s, m) {
                s[m].loading = true;
                self.pool.set_loaded(m, true);
                drop(s);
                let loaded = self.load(m);
                s = self.lock();
                s[m].loading = false;
                match loaded {
                    Ok(inf) => {
                        s[m].inference = Some(inf);
                        s[m].loads += 1;
                        self.cv.notify_all();
                        self.changed();
                        continue;
                    }
                    Err(e) => {
                        self.pool.set_loaded(m, false);
                        self.cv.notify_all();
                        return Err(Refused::Failed(format!(
                            "loading model {} failed: {e:#}",
                            self.registry.models[m].id
                        )));
                    }
                }
            }
            if let Some(v) = Self::idle_victim(&s, m) {
                let inf = s[v].inference.take();
                s[v].unloading = true;
                self.pool.set_loaded(v, false);
                drop(s);
                self.unload(v, inf, "to make room");
                s = self.lock();
                s[v].unloading = false;
                self.cv.notify_all();
                continue;
            }
            s = self.wait(s);
        }
    }

    fn wait<'g>(&self, s: MutexGuard<'g, Vec<Slot>>) -> MutexGuard<'g, Vec<Slot>> {
        // Bounded, so that a shutdown is seen.
        self.cv
            .wait_timeout(s, Duration::from_millis(200))
            .map(|(g, _)| g)
            .unwrap_or_else(|e| e.into_inner().0)
    }

    /// Loads model `m` now (outside the lock).
    fn load(&self, m: usize) -> anyhow::Result<Arc<Inference>> {
        let spec = &self.registry.models[m];
        let st = &self.settings;
        let t0 = Instant::now();
        let inf = Inference::start(
            st.engine,
            &spec.path,
            spec.mmproj.as_deref(),
            spec.vocoder.as_deref(),
            st.speaker.as_deref(),
            st.engine_cfg.clone(),
            st.workers,
        )?;
        tracing::info!(
            "model {} loaded in {:.2} s (estimated {})",
            spec.id,
            t0.elapsed().as_secs_f64(),
            human_bytes(spec.bytes)
        );
        Ok(Arc::new(inf))
    }

    /// Drops a model (its engine thread stopped, its memory freed).
    fn unload(&self, m: usize, inf: Option<Arc<Inference>>, why: &str) {
        let Some(inf) = inf else {
            return;
        };
        let t0 = Instant::now();
        if Arc::strong_count(&inf) > 1 {
            tracing::warn!(
                "unloading model {}: still referenced elsewhere; its memory is freed when that ends",
                self.registry.models[m].id
            );
        }
        let _ = inf.shutdown_within(Duration::from_secs(10));
        drop(inf);
        tracing::info!(
            "model {} unloaded {why} in {:.2} s",
            self.registry.models[m].id,
            t0.elapsed().as_secs_f64()
        );
        self.changed();
    }

    /// Loads model `m` now (at start: the default model), so that a model
    /// that cannot load stops the daemon before it serves.
    /// Returns the model's name and its engine's figures.
    /// Returns the model's name, its engine's figures and its workers
    /// (as chosen at load under `--workers auto`).
    pub fn preload(&self, m: usize) -> anyhow::Result<(String, Option<Arc<nrvna_engine::EngineStats>>, u32)> {
        let never = AtomicBool::new(false);
        match self.acquire(m, &never) {
            Ok(u) => Ok((
                u.inference().model_name().to_owned(),
                u.inference().stats(),
                u.inference().workers(),
            )),
            Err(Refused::Failed(e)) => Err(anyhow::anyhow!(e)),
            Err(Refused::Stopping) => unreachable!("never stops"),
        }
    }

    /// Unloads the models that ran no job for `idle`; returns how many.
    pub fn unload_idle(&self, idle: Duration) -> usize {
        let now = Instant::now();
        let mut s = self.lock();
        let victims: Vec<(usize, Option<Arc<Inference>>)> = (0..s.len())
            .filter(|&i| {
                s[i].inference.is_some()
                    && s[i].in_use == 0
                    && s[i].last_used.is_some_and(|t| now.saturating_duration_since(t) >= idle)
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|i| (i, s[i].inference.take()))
            .collect();
        for (i, _) in &victims {
            self.pool.set_loaded(*i, false);
            s[*i].unloading = true;
        }
        drop(s);
        let n = victims.len();
        for (i, inf) in victims {
            self.unload(i, inf, "after --idle-unload");
            self.lock()[i].unloading = false;
        }
        if n > 0 {
            self.cv.notify_all();
        }
        n
    }

    /// Unloads every model (at shutdown), waiting at most `within` for
    /// each engine to stop; false if one did not.
    pub fn shutdown_within(&self, within: Duration) -> bool {
        let all: Vec<Arc<Inference>> = self.lock().iter_mut().filter_map(|s| s.inference.take()).collect();
        all.iter().all(|i| i.shutdown_within(within))
    }

    /// Each model's state, by index.
    pub fn states(&self) -> Vec<ModelState> {
        self.lock()
            .iter()
            .map(|s| ModelState {
                loaded: s.inference.is_some(),
                running: s.in_use,
                loads: s.loads,
            })
            .collect()
    }

    /// Model loads since the start.
    pub fn loads(&self) -> u64 {
        self.lock().iter().map(|s| s.loads).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{ModelSpec, Sizing};
    use std::path::Path;

    fn loader(n: usize, max_loaded: usize, budget: Option<u64>) -> Loader {
        let s = Sizing {
            engine: EngineKind::Echo,
            max_ctx: 512,
            workers: 1,
        };
        let mut models: Vec<ModelSpec> = (0..n)
            .map(|i| ModelSpec::describe(Path::new(&format!("/nowhere/m{i}.gguf")), None, None, s).unwrap())
            .collect();
        for m in &mut models {
            m.bytes = 100;
        }
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from(["nrvnad", "--engine", "echo", "m", "ws"]).unwrap();
        let cfg = crate::config::Config::from_args(&cli.serve).unwrap();
        let settings = LoadSettings {
            engine: EngineKind::Echo,
            engine_cfg: cfg.engine_cfg,
            workers: 1,
            speaker: None,
            max_loaded,
            budget,
        };
        Loader::new(
            Arc::new(Registry { models, default: 0 }),
            settings,
            Arc::new(Pool::for_models(n, Duration::from_secs(1))),
        )
    }

    #[test]
    fn the_least_recently_used_idle_model_makes_room() {
        let l = loader(3, 2, None);
        let stop = AtomicBool::new(false);
        drop(l.acquire(0, &stop).unwrap());
        drop(l.acquire(1, &stop).unwrap());
        drop(l.acquire(0, &stop).unwrap());
        drop(l.acquire(2, &stop).unwrap());
        let loaded: Vec<bool> = l.states().iter().map(|s| s.loaded).collect();
        assert_eq!(loaded, [true, false, true], "model 1 was least recently used");
        assert_eq!(l.loads(), 3);
    }

    #[test]
    fn the_memory_budget_limits_what_is_loaded_together() {
        let l = loader(3, 3, Some(250));
        let stop = AtomicBool::new(false);
        drop(l.acquire(0, &stop).unwrap());
        drop(l.acquire(1, &stop).unwrap());
        drop(l.acquire(2, &stop).unwrap());
        assert_eq!(l.states().iter().filter(|s| s.loaded).count(), 2);
        // A budget below one model still serves it, alone.
        let l = loader(2, 2, Some(10));
        drop(l.acquire(0, &stop).unwrap());
        drop(l.acquire(1, &stop).unwrap());
        assert_eq!(l.states().iter().filter(|s| s.loaded).count(), 1);
    }

    #[test]
    fn a_switch_waits_for_the_running_jobs_of_the_model_it_unloads() {
        let l = Arc::new(loader(2, 1, None));
        let stop = Arc::new(AtomicBool::new(false));
        let held = l.acquire(0, &stop).unwrap();
        let (l2, stop2) = (l.clone(), stop.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            let u = l2.acquire(1, &stop2).map(|_| ());
            tx.send(u).unwrap();
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "model 1 loaded while model 0 still runs a job"
        );
        assert_eq!(l.states()[0].running, 1);
        drop(held);
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), Ok(()));
        t.join().unwrap();
        let st = l.states();
        assert!(!st[0].loaded && st[1].loaded);
        // A waiting worker leaves at shutdown.
        let held = l.acquire(1, &stop).unwrap();
        stop.store(true, Ordering::SeqCst);
        assert_eq!(l.acquire(0, &stop).err(), Some(Refused::Stopping));
        drop(held);
    }

    #[test]
    fn idle_models_are_unloaded() {
        let l = loader(2, 2, None);
        let stop = AtomicBool::new(false);
        drop(l.acquire(0, &stop).unwrap());
        let held = l.acquire(1, &stop).unwrap();
        assert_eq!(l.unload_idle(Duration::ZERO), 1, "the model in use stays");
        drop(held);
        assert_eq!(l.unload_idle(Duration::from_secs(3600)), 0);
        assert_eq!(l.unload_idle(Duration::ZERO), 1);
        assert!(l.states().iter().all(|s| !s.loaded));
    }
}
