//! A finished batch's webhook event (`batch.completed|failed|cancelled|
//! expired`) and its token `usage` as OpenAI's batch object has it, summed
//! from its jobs' meta.json when it ends.

use nrvna_core::fsio::read_optional;
use nrvna_core::meta::MAX_META_BYTES;
use nrvna_core::webhook::{Derived, EventType, Outbox, Target};
use nrvna_core::{Meta, State, Workspace};
use serde_json::{json, Value};

use super::record::BatchRecord;

/// The event a finished batch makes; `None` while it runs.
pub fn event(rec: &BatchRecord) -> Option<Derived> {
    let kind = if rec.failed_at.is_some() {
        EventType::BatchFailed
    } else if rec.cancelled_at.is_some() {
        EventType::BatchCancelled
    } else if rec.expired_at.is_some() {
        EventType::BatchExpired
    } else if rec.completed_at.is_some() {
        EventType::BatchCompleted
    } else {
        return None;
    };
    Some(Derived {
        kind,
        subject: rec.id.clone(),
        target: Target::Workspace,
    })
}

/// Puts a finished batch's event into the outbox unless it is there (or
/// was sent) already. Called for every finished record the gateway sees,
/// so an end recorded just before a crash is announced after the restart.
pub fn announce(ws: &Workspace, rec: &BatchRecord, hooks: &nrvna_hooks::Config) {
    let Some(d) = event(rec) else { return };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    // Ended before any retry period now running: no event (the history of
    // a workspace is not sent when webhooks are first configured).
    let ended = [rec.completed_at, rec.cancelled_at, rec.failed_at, rec.expired_at]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(rec.created_at);
    if ended
        .saturating_mul(1000)
        .saturating_add(hooks.retry_for.as_millis() as i64)
        < now
    {
        return;
    }
    let made = Outbox::open(ws.root(), ws.io().clone()).and_then(|o| o.derive(&d, now, hooks.retry_for));
    match made {
        Ok(Some(e)) => tracing::info!("batch {}: {} event {}", rec.id, d.kind, e.id),
        Ok(None) => {}
        Err(e) => tracing::warn!(
            "batch {}: recording its {} event: {e}; trying again later",
            rec.id,
            d.kind
        ),
    }
}

/// OpenAI's batch `usage`: the input, cached input and output tokens of
/// the finished jobs `jobs` (done or failed), summed.
pub fn usage(ws: &Workspace, jobs: &[(nrvna_core::JobId, State)]) -> Value {
    let (mut input, mut cached, mut output) = (0u64, 0u64, 0u64);
    for (id, st) in jobs {
        let p = ws.job_dir(*st, id).join("meta.json");
        let Some(m) = read_optional(&p, MAX_META_BYTES)
            .ok()
            .flatten()
            .and_then(|b| Meta::parse(&b).ok())
        else {
            continue;
        };
        let n = |k: &str| m.extra(k).and_then(Value::as_u64).unwrap_or(0);
        input += n("prompt_tokens");
        cached += n("reused_prompt_tokens");
        output += n("generated_tokens");
    }
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input + output,
    })
}
