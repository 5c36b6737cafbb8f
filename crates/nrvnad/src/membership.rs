//! This member of a shared workspace (`--shared`): its id, its lease, the
//! claims it holds, and its counters. Shared by the processors (claim,
//! release, fence) and the lease thread (heartbeat, reaping); it does no
//! I/O of its own besides the claim file it writes and reads.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use nrvna_core::members::{self, read_claim, write_claim, Claim};
use nrvna_core::{FileIo, JobId};

/// This member: its id, its lease, the claims it holds, and its counters.
/// Shared by the processors (claim, release, fence) and the lease thread.
#[derive(Debug)]
pub struct Membership {
    pub id: String,
    pub ttl: Duration,
    held: Mutex<HashMap<JobId, Claim>>,
    /// Jobs claimed by this member.
    pub claimed: AtomicU64,
    /// Claiming renames that found the job gone: another member (or
    /// worker) renamed it between the listing check and this rename.
    pub lost_races: AtomicU64,
    /// Results discarded because the job was claimed again elsewhere
    /// while this member had lost its lease.
    pub fenced: AtomicU64,
    /// Jobs this member returned from expired members.
    pub recovered: AtomicU64,
    /// Jobs in `processing/` whose holder is not yet known to be alive or
    /// dead (a `--drain` member waits for them).
    pub unsettled: AtomicUsize,
    /// Members alive (this one included) at the last lease pass.
    pub alive: AtomicUsize,
}

impl Membership {
    pub fn new(ttl: Duration) -> Membership {
        Membership {
            id: members::new_member_id(),
            ttl,
            held: Mutex::new(HashMap::new()),
            claimed: AtomicU64::new(0),
            lost_races: AtomicU64::new(0),
            fenced: AtomicU64::new(0),
            recovered: AtomicU64::new(0),
            unsettled: AtomicUsize::new(0),
            alive: AtomicUsize::new(1),
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Claim>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records this member as the holder of a job it just claimed.
    pub fn claim(&self, io: &FileIo, id: &JobId, dir: &Path) -> io::Result<Claim> {
        let c = Claim::new(&self.id);
        self.held().insert(id.clone(), c.clone());
        write_claim(io, dir, &c)?;
        self.claimed.fetch_add(1, Ordering::Relaxed);
        Ok(c)
    }

    /// Forgets a job (finished, fenced, or left for recovery).
    pub fn release(&self, id: &JobId) {
        self.held().remove(id);
    }

    /// Whether this member still holds the job: its claim file still
    /// carries this claim's token.
    pub fn still_holds(dir: &Path, claim: &Claim) -> bool {
        read_claim(dir).as_ref() == Some(claim)
    }

    pub fn running(&self) -> Vec<String> {
        let mut v: Vec<String> = self.held().keys().map(|i| i.as_str().to_owned()).collect();
        v.sort();
        v
    }

    pub fn holds(&self, id: &JobId) -> bool {
        self.held().contains_key(id)
    }
}
