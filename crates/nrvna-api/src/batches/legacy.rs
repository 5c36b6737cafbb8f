//! Batches recorded by an earlier gateway (no `"jobs": "by_line"` in the
//! record): their jobs have random ids and are found by the batch's tag,
//! reading every job's meta.json. Kept so that those batches still report,
//! finish publishing and cancel; new batches never take this path.

use nrvna_core::batch::{self, BatchLock, MAX_BATCH_BYTES};
use nrvna_core::cancel::cancel_job;
use nrvna_core::fsio::read_limited;
use nrvna_core::{State, Workspace};

use super::record::{write_record, Dirs};
use super::tagged_jobs;
use super::work::batch_defaults;

/// What the jobs tagged with the batch say: done, failed, how many jobs,
/// and the last completion time.
pub struct Counts {
    pub done: u64,
    pub failed: u64,
    pub jobs: u64,
    pub last_completed: i64,
}

pub fn counts(ws: &Workspace, tag: &str) -> Counts {
    let jobs = tagged_jobs(ws, tag);
    let mut c = Counts {
        done: 0,
        failed: 0,
        jobs: jobs.len() as u64,
        last_completed: 0,
    };
    for (job, meta) in &jobs {
        match job.state {
            State::Done => c.done += 1,
            State::Failed => c.failed += 1,
            _ => continue,
        }
        if let Some(t) = meta.completed_at.as_deref().and_then(nrvna_core::time::unix_seconds) {
            c.last_completed = c.last_completed.max(t);
        }
    }
    c
}

/// Publishes what an earlier gateway that died while publishing left
/// unpublished (the lines whose custom_id has no tagged job), under the
/// batch's lock, then marks the record published.
pub fn recover(ws: &Workspace, dirs: &Dirs, id: &str) -> Result<(), String> {
    let lock = BatchLock::try_acquire(&dirs.lock(id)).map_err(|e| format!("batch {id}: taking {id}.lock: {e}"))?;
    let Some(_lock) = lock else { return Ok(()) };
    let Some(mut rec) = dirs.read(id) else { return Ok(()) };
    if rec.by_line() || rec.published || rec.cancelling_at.is_some() {
        return Ok(());
    }
    let input = rec.input_file_id.clone();
    let Ok(bytes) = read_limited(&dirs.input(&input), MAX_BATCH_BYTES) else {
        tracing::warn!("batch {id}: its input file {input} is gone; it cannot be completed");
        return Ok(());
    };
    let subs = batch::parse(&bytes, &batch_defaults(), id, ws.settings().max_prompt_bytes)
        .map_err(|e| format!("batch {id}: {e}"))?;
    let have: std::collections::HashSet<String> = tagged_jobs(ws, id)
        .iter()
        .filter_map(|(_, m)| m.extra_str("custom_id").map(str::to_owned))
        .collect();
    let missing: Vec<_> = subs
        .into_iter()
        .filter(|s| !have.contains(s.extra_meta["custom_id"].as_str().unwrap_or_default()))
        .collect();
    batch::publish_all(ws, &missing).map_err(|e| format!("batch {id}: {e}"))?;
    rec.published = true;
    write_record(ws, dirs, &rec)?;
    tracing::info!(
        "batch {id}: published the {} request(s) left unpublished by an earlier gateway",
        missing.len()
    );
    Ok(())
}

/// Cancels every job tagged with the batch that has not finished.
pub fn sweep(ws: &Workspace, tag: &str) {
    for (job, _) in tagged_jobs(ws, tag) {
        if !job.state.is_terminal() {
            if let Err(e) = cancel_job(ws, &job.id) {
                tracing::warn!("batch {tag}: cancelling job {}: {e}", job.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batches::record::write_json;
    use serde_json::json;

    #[test]
    fn an_earlier_gateways_batch_left_half_published_is_completed_once() {
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::create(d.path()).unwrap();
        let dirs = Dirs {
            files: d.path().join("api/files"),
            batches: d.path().join("api/batches"),
        };
        std::fs::create_dir_all(&dirs.files).unwrap();
        std::fs::create_dir_all(&dirs.batches).unwrap();
        let line = |c: &str| {
            format!(
                r#"{{"custom_id":"{c}","method":"POST","url":"/v1/chat/completions","body":{{"messages":[{{"role":"user","content":"hi {c}"}}]}}}}"#
            )
        };
        let input = format!("{}\n{}\n{}\n", line("a"), line("b"), line("c"));
        std::fs::write(dirs.input("file-1_1_000001"), &input).unwrap();
        let id = "batch_1_1_000002";
        let rec = json!({
            "id": id, "object": "batch", "endpoint": "/v1/chat/completions", "input_file_id": "file-1_1_000001",
            "completion_window": "24h", "created_at": 1, "metadata": null, "total": 3, "published": false,
        });
        write_json(&ws, &dirs.batches, &format!("{id}.json"), &rec).unwrap();
        // The killed gateway had published the first request only.
        let subs = batch::parse(input.as_bytes(), &batch_defaults(), id, ws.settings().max_prompt_bytes).unwrap();
        batch::publish_all(&ws, &subs[..1]).unwrap();

        recover(&ws, &dirs, id).unwrap();
        recover(&ws, &dirs, id).unwrap();
        let jobs = tagged_jobs(&ws, id);
        let ids: Vec<_> = jobs
            .iter()
            .map(|(_, m)| m.extra_str("custom_id").unwrap().to_owned())
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
        // Written back as it was, but published.
        let want = format!("{rec}\n").replace(r#""published":false"#, r#""published":true"#);
        assert_eq!(std::fs::read_to_string(dirs.record(id)).unwrap(), want);
        let p = std::fs::read_to_string(jobs[1].0.dir.join("params.json")).unwrap();
        assert!(p.contains(r#""priority": "low""#), "{p}");
    }
}
