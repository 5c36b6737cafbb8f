//! What an exclusive daemon tells readers about itself in `.nrvnad.info`
//! (one compact JSON line the C++ tools read too): the fixed keys written
//! at start, and the `models` list (each model's loaded state, estimated
//! memory, backlog and loads), rewritten when that changes.

use std::time::{Duration, Instant};

use nrvna_core::lifecycle::DaemonLock;
use nrvna_core::Workspace;
use serde_json::{json, Value};

use crate::models::loader::Loader;
use crate::pool::Pool;

/// Least time between two rewrites for a backlog change alone (a load or
/// unload is published at once).
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// The `models` list: per model its id, path, whether it is loaded, its
/// estimated bytes, its queued and running jobs and its loads so far.
pub fn models_json(loader: &Loader, pool: &Pool) -> Value {
    let states = loader.states();
    let backlog = pool.by_model();
    let r = loader.registry();
    r.models
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let st = states.get(i);
            // Jobs handed to workers that wait for the model count as
            // queued until they run.
            let (queued, taken) = backlog.get(i).copied().unwrap_or_default();
            let running = st.map_or(0, |s| s.running);
            let queued = queued + taken.saturating_sub(running);
            json!({
                "id": m.id,
                "path": m.path.display().to_string(),
                "loaded": st.is_some_and(|s| s.loaded),
                "bytes": m.bytes,
                "queued": queued,
                "running": running,
                "loads": st.map_or(0, |s| s.loads),
                "default": i == r.default,
            })
        })
        .collect()
}

/// Rewrites `.nrvnad.info` when the models' state changed.
pub struct InfoPublisher {
    /// The keys fixed at start.
    base: Value,
    last: Value,
    at: Instant,
}

impl InfoPublisher {
    pub fn new(base: Value) -> InfoPublisher {
        InfoPublisher {
            base,
            last: Value::Null,
            at: Instant::now(),
        }
    }

    /// The record now.
    fn record(&self, loader: &Loader, pool: &Pool) -> (Value, Value) {
        let models = models_json(loader, pool);
        let mut v = self.base.clone();
        v["models"] = models.clone();
        v["model_loads"] = json!(loader.loads());
        v["model_switches"] = json!(pool.switches());
        (v, models)
    }

    /// Writes the record if it changed (a backlog change at most once a
    /// second; a change of what is loaded at once).
    pub fn publish(&mut self, lock: &DaemonLock, ws: &Workspace, loader: &Loader, pool: &Pool) {
        let (v, models) = self.record(loader, pool);
        if models == self.last {
            return;
        }
        let loaded = |m: &Value| -> Vec<bool> {
            m.as_array()
                .map(|a| a.iter().map(|x| x["loaded"] == true).collect())
                .unwrap_or_default()
        };
        if loaded(&models) == loaded(&self.last) && self.at.elapsed() < MIN_INTERVAL {
            return;
        }
        if let Err(e) = lock.write_info(ws, &v) {
            tracing::warn!("rewriting {}: {e}", ws.file(nrvna_core::workspace::INFO_FILE).display());
            return;
        }
        self.last = models;
        self.at = Instant::now();
    }
}
