//! Membership of a shared workspace (`--shared`): this member's record and
//! heartbeat, the claims it holds, and the reaper that returns the jobs of
//! members whose lease expired.
//!
//! Liveness never compares clocks across hosts: a member is alive while
//! the `beat` counter in its record keeps changing, as seen on this
//! member's own monotonic clock. A member whose counter stood still for its
//! lease (`lease_ttl_s`) is expired; one member (the live one with the
//! smallest id) then moves each job whose `.nrvna-claim` names it back to
//! `input/ready/`, counting the attempt, after checking again that the claim
//! has not changed. A job in `processing/` that names no member with a
//! record (its holder died between the claiming rename and the claim file,
//! or left without finishing it) is recovered once it has been seen that
//! way for a whole lease. See docs/CONTRACT-EXTENSIONS.md.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use nrvna_core::members::{
    self, read_claim, read_member, remove_member, stop_requested, write_member, Claim, MemberRecord,
};
use nrvna_core::time::iso8601_utc;
use nrvna_core::{JobId, State, Workspace};

use crate::events::Event;
use crate::membership::Membership;
use crate::recovery::{recover_guarded, Recovery};

/// How often a member with lease `ttl` beats (several beats per lease).
pub fn beat_interval(ttl: Duration) -> Duration {
    (ttl / 5).clamp(Duration::from_millis(50), Duration::from_secs(2))
}

/// What this member knows of another one's heartbeat.
#[derive(Debug)]
pub struct Seen {
    beat: u64,
    /// When (on this clock) the counter last changed, or was first seen.
    since: Instant,
    /// The counter changed at least once while watched.
    confirmed: bool,
}

/// Which members are alive, as one pass of [`classify`] judged them.
#[derive(Debug, Default)]
pub struct Liveness {
    /// Every member with a record (this one included).
    pub present: HashSet<String>,
    /// Members alive whose counter has not moved yet while watched, or
    /// whose record could not be read: neither alive nor dead for sure.
    pub unconfirmed: HashSet<String>,
    /// Members whose counter stood still for their whole lease.
    pub expired: HashMap<String, MemberRecord>,
    /// Whether this member is the reaper (the live one with the smallest id).
    pub reaper: bool,
}

/// What a reaping pass does with one job it does not hold.
#[derive(Debug, PartialEq, Eq)]
enum JobVerdict {
    /// Return it to `input/ready/`, for this reason.
    Recover(String),
    /// Its holder is not yet known to be alive or dead.
    Wait,
    /// A live member holds it.
    Held,
}

/// Judges the other members from their `records` (`None`: unreadable) as
/// seen at `now`, updating what `seen` remembers of their counters. Pure:
/// no clock and no files, so tests drive it with made-up instants.
pub fn classify(
    seen: &mut HashMap<String, Seen>,
    me: &str,
    records: Vec<(String, Option<MemberRecord>)>,
    now: Instant,
) -> Liveness {
    let mut lv = Liveness::default();
    lv.present.insert(me.to_owned());
    lv.present.extend(records.iter().map(|(id, _)| id.clone()));
    seen.retain(|k, _| lv.present.contains(k));
    let mut live: Vec<&str> = vec![me];
    for (id, rec) in &records {
        let Some(rec) = rec else {
            // Unreadable: neither alive nor dead; its jobs wait.
            lv.unconfirmed.insert(id.clone());
            continue;
        };
        let s = seen.entry(id.clone()).or_insert(Seen {
            beat: rec.beat,
            since: now,
            confirmed: false,
        });
        if s.beat != rec.beat {
            s.beat = rec.beat;
            s.since = now;
            s.confirmed = true;
        }
        let ttl = Duration::from_secs_f64(rec.lease_ttl_s.clamp(0.05, 86_400.0));
        if now.duration_since(s.since) >= ttl {
            lv.expired.insert(id.clone(), rec.clone());
        } else {
            live.push(id);
            if !s.confirmed {
                lv.unconfirmed.insert(id.clone());
            }
        }
    }
    lv.reaper = live.iter().min().is_some_and(|m| *m == me);
    lv
}

/// The lease thread: heartbeat, stop requests, reaping.
pub struct Lease {
    pub ws: Workspace,
    pub me: Arc<Membership>,
    pub record: MemberRecord,
    pub events: Sender<Event>,
    pub max_recovery_attempts: u64,
    seen: HashMap<String, Seen>,
    orphans: HashMap<JobId, (Option<Claim>, Instant)>,
    stop_sent: bool,
}

impl Lease {
    pub fn new(
        ws: Workspace,
        me: Arc<Membership>,
        record: MemberRecord,
        events: Sender<Event>,
        max_recovery_attempts: u64,
    ) -> Lease {
        Lease {
            ws,
            me,
            record,
            events,
            max_recovery_attempts,
            seen: HashMap::new(),
            orphans: HashMap::new(),
            stop_sent: false,
        }
    }

    /// Beats until `stop` is set (or `wake` is dropped), then removes the
    /// record. The server stops it only after its workers are done, so the
    /// lease covers every job this member still holds.
    pub fn run(mut self, stop: Arc<AtomicBool>, wake: Receiver<()>) {
        let interval = beat_interval(self.me.ttl);
        let mut last_beat = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            self.beat(&mut last_beat);
            if !self.stop_sent && stop_requested(&self.ws, &self.me.id) {
                tracing::info!("member {}: stop requested (nrvnad stop); shutting down", self.me.id);
                let _ = self.events.send(Event::Signal);
                self.stop_sent = true;
            }
            self.reap();
            let _ = self.events.send(Event::Lease);
            match wake.recv_timeout(interval) {
                Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        if let Err(e) = remove_member(&self.ws, &self.me.id) {
            tracing::warn!("removing this member's record: {e}");
        }
    }

    /// Writes the record with the next heartbeat.
    pub fn beat(&mut self, last: &mut Instant) {
        self.record.beat += 1;
        self.record.beat_at = iso8601_utc(SystemTime::now());
        self.record.running = self.me.running();
        match write_member(&self.ws, &self.record) {
            Ok(()) => {
                let gap = last.elapsed();
                if gap > self.me.ttl {
                    tracing::warn!(
                        "member {}: no heartbeat for {:.1} s, past the {:.1} s lease (paused, or the filesystem stalled); \
                         other members may have taken its jobs back: each one is checked before its result is published",
                        self.me.id,
                        gap.as_secs_f64(),
                        self.me.ttl.as_secs_f64()
                    );
                }
                *last = Instant::now();
            }
            Err(e) => tracing::warn!(
                "member {}: writing the heartbeat into {}: {e}; will retry",
                self.me.id,
                members::members_dir(&self.ws).display()
            ),
        }
    }

    /// One pass: which members are alive, which expired; the reaper (the
    /// live member with the smallest id) returns expired members' and
    /// orphaned jobs to `input/ready/`.
    fn reap(&mut self) {
        let now = Instant::now();
        let ids = members::member_ids(&self.ws);
        let records: Vec<(String, Option<MemberRecord>)> = ids
            .into_iter()
            .filter(|id| *id != self.me.id)
            .map(|id| {
                let rec = read_member(&self.ws, &id).ok();
                (id, rec)
            })
            .collect();
        let lv = classify(&mut self.seen, &self.me.id, records, now);
        let jobs = self.ws.list(State::Processing).unwrap_or_default();
        let listed: HashSet<JobId> = jobs.iter().cloned().collect();
        self.orphans.retain(|k, _| listed.contains(k));
        let mut unsettled = 0;
        for id in jobs {
            if self.me.holds(&id) {
                self.orphans.remove(&id);
                continue;
            }
            let claim = read_claim(&self.ws.job_dir(State::Processing, &id));
            match self.judge_job(&lv, &id, claim.as_ref(), now) {
                JobVerdict::Recover(why) => self.recover(&id, claim, &why),
                JobVerdict::Wait => unsettled += 1,
                JobVerdict::Held => {}
            }
        }
        if lv.reaper {
            for (id, rec) in &lv.expired {
                tracing::warn!(
                    "member {id} (host {}, pid {}) missed its lease; its record is removed",
                    rec.host,
                    rec.pid
                );
                let _ = members::remove_record(&self.ws, id);
                self.seen.remove(id);
            }
        }
        self.me.unsettled.store(unsettled, Ordering::SeqCst);
        let alive = lv.present.len().saturating_sub(lv.expired.len());
        self.me.alive.store(alive, Ordering::Relaxed);
    }

    /// What to do with a job in `processing/` that this member does not
    /// hold, whose claim file says `claim`.
    fn judge_job(&mut self, lv: &Liveness, id: &JobId, claim: Option<&Claim>, now: Instant) -> JobVerdict {
        match claim {
            Some(c) if lv.expired.contains_key(&c.member) => {
                self.orphans.remove(id);
                if !lv.reaper {
                    return JobVerdict::Wait;
                }
                let rec = &lv.expired[&c.member];
                JobVerdict::Recover(format!(
                    "held by member {} (host {}) whose heartbeat stood still for its {:.1} s lease",
                    c.member, rec.host, rec.lease_ttl_s
                ))
            }
            Some(c) if c.member != self.me.id && lv.present.contains(&c.member) => {
                self.orphans.remove(id);
                if lv.unconfirmed.contains(&c.member) {
                    JobVerdict::Wait
                } else {
                    JobVerdict::Held
                }
            }
            // No claim, a claim by a member without a record, or a claim
            // in this member's name that it does not hold.
            _ => {
                let first = match self.orphans.get(id) {
                    Some((c, t)) if c.as_ref() == claim => *t,
                    _ => {
                        self.orphans.insert(id.clone(), (claim.cloned(), now));
                        now
                    }
                };
                if lv.reaper && now.duration_since(first) >= self.me.ttl {
                    self.orphans.remove(id);
                    let who = match claim {
                        Some(c) => format!("held by member {}, which has no record", c.member),
                        None => "with no holder recorded".to_owned(),
                    };
                    JobVerdict::Recover(format!("{who} for a whole lease"))
                } else {
                    JobVerdict::Wait
                }
            }
        }
    }

    /// Returns one job to `input/ready/` if its claim is still `claim`.
    fn recover(&mut self, id: &JobId, claim: Option<Claim>, why: &str) {
        let dir = self.ws.job_dir(State::Processing, id);
        let unchanged = || read_claim(&dir) == claim;
        match recover_guarded(&self.ws, id, self.max_recovery_attempts, &unchanged) {
            Recovery::Requeued | Recovery::Failed => {
                self.me.recovered.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "lease: recovered {id} from {}: {why}",
                    claim.as_ref().map(|c| c.member.as_str()).unwrap_or("nobody")
                );
            }
            Recovery::Left => {}
        }
    }
}

/// This member's record, before the first heartbeat.
pub struct RecordInfo<'a> {
    pub model: &'a Path,
    pub serves: Vec<String>,
    pub engine: &'a str,
    pub workers: u32,
}

/// A fresh record for this member.
pub fn record_for(me: &Membership, info: RecordInfo<'_>) -> MemberRecord {
    MemberRecord {
        member: me.id.clone(),
        host: members::host_name(),
        boot_id: members::boot_id(),
        pid: std::process::id(),
        pid_ns: members::pid_ns(),
        model: info.model.display().to_string(),
        serves: info.serves,
        engine: info.engine.to_owned(),
        workers: info.workers,
        started_at: iso8601_utc(SystemTime::now()),
        lease_ttl_s: me.ttl.as_secs_f64(),
        beat: 0,
        beat_at: String::new(),
        running: Vec::new(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        state: None,
        extra: Default::default(),
    }
}

/// Watches the records in `.nrvna-members/` for up to the longest lease
/// they declare: the first member whose heartbeat moves is returned (an
/// exclusive daemon must not start beside live members, which may be on
/// hosts that do not share its flock). Records that stood still are stale
/// and removed.
pub fn live_member_among_records(ws: &Workspace) -> Option<MemberRecord> {
    let first: Vec<MemberRecord> = members::list_members(ws);
    if first.is_empty() {
        return None;
    }
    let longest = first
        .iter()
        .map(|r| r.lease_ttl_s)
        .fold(0.0, f64::max)
        .clamp(0.05, 300.0);
    tracing::info!(
        "{} member records of a shared workspace found; watching their heartbeats for up to {longest:.1} s",
        first.len()
    );
    let deadline = Instant::now() + Duration::from_secs_f64(longest);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        for r in &first {
            if let Ok(now) = read_member(ws, &r.member) {
                if now.beat != r.beat {
                    return Some(now);
                }
            }
        }
    }
    for r in &first {
        tracing::info!("removing the stale record of member {} (host {})", r.member, r.host);
        let _ = members::remove_record(ws, &r.member);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use nrvna_core::members::write_claim;
    use nrvna_core::FileIo;

    #[test]
    fn beats_come_several_times_per_lease() {
        assert_eq!(beat_interval(Duration::from_secs(30)), Duration::from_secs(2));
        assert_eq!(beat_interval(Duration::from_secs(2)), Duration::from_millis(400));
        assert_eq!(beat_interval(Duration::from_millis(100)), Duration::from_millis(50));
    }

    fn job(ws: &Workspace, id: &str) -> JobId {
        let id = JobId::parse(id).unwrap();
        std::fs::create_dir_all(ws.job_dir(State::Processing, &id)).unwrap();
        std::fs::write(ws.job_dir(State::Processing, &id).join("prompt.txt"), "p").unwrap();
        id
    }

    /// A record for `me` as a test daemon would write it.
    fn test_record(me: &Membership) -> MemberRecord {
        record_for(
            me,
            RecordInfo {
                model: Path::new("m.gguf"),
                serves: vec![],
                engine: "echo",
                workers: 1,
            },
        )
    }

    fn lease(ws: &Workspace, ttl: Duration) -> Lease {
        let me = Arc::new(Membership::new(ttl));
        let rec = test_record(&me);
        let (tx, _rx) = std::sync::mpsc::channel();
        Lease::new(ws.clone(), me, rec, tx, 3)
    }

    #[test]
    fn a_live_holders_job_is_never_taken_and_a_dead_ones_is_after_its_lease() {
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::create(d.path()).unwrap();
        let ttl = Duration::from_millis(300);
        let mut a = lease(&ws, ttl);
        let mut b = lease(&ws, ttl);
        let mut last = Instant::now();
        a.beat(&mut last);
        b.beat(&mut last);
        let id = job(&ws, "1700000000_1_1");
        b.me.claim(ws.io(), &id, &ws.job_dir(State::Processing, &id)).unwrap();
        // While b beats, a never takes its job, however long it watches.
        let until = Instant::now() + ttl * 3;
        let mut last_beat = Instant::now();
        while Instant::now() < until {
            last_beat = Instant::now();
            b.beat(&mut last);
            a.reap();
            std::thread::sleep(Duration::from_millis(30));
        }
        assert_eq!(ws.locate(&id), Some(State::Processing));
        assert_eq!(a.me.recovered.load(Ordering::SeqCst), 0);
        // b stops beating: after its lease, a (the only live member) takes it back.
        let stopped = Instant::now();
        while ws.locate(&id) == Some(State::Processing) {
            a.reap();
            std::thread::sleep(Duration::from_millis(20));
            assert!(stopped.elapsed() < ttl * 5, "never recovered");
        }
        // a saw b's last beat no earlier than b wrote it, so the job comes
        // back no sooner than a lease after that beat.
        assert!(last_beat.elapsed() >= ttl, "recovered before the lease expired");
        assert_eq!(ws.locate(&id), Some(State::Ready));
        let meta = std::fs::read_to_string(ws.job_dir(State::Ready, &id).join("meta.json")).unwrap();
        assert!(meta.contains("\"recovery_attempts\": 1"), "{meta}");
        assert!(!ws.job_dir(State::Ready, &id).join(members::CLAIM_FILE).exists());
        // b's claim no longer holds: it must not publish.
        assert!(members::list_members(&ws).iter().all(|r| r.member != b.me.id));
    }

    #[test]
    fn a_job_without_a_holder_waits_a_whole_lease() {
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::create(d.path()).unwrap();
        let ttl = Duration::from_millis(300);
        let mut a = lease(&ws, ttl);
        let id = job(&ws, "1700000000_2_1");
        let t0 = Instant::now();
        a.reap();
        assert_eq!(a.me.unsettled.load(Ordering::SeqCst), 1);
        while ws.locate(&id) == Some(State::Processing) {
            std::thread::sleep(Duration::from_millis(20));
            a.reap();
            assert!(t0.elapsed() < ttl * 5);
        }
        assert!(t0.elapsed() >= ttl);
        assert_eq!(a.me.unsettled.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_claim_that_changed_since_it_was_judged_is_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::create(d.path()).unwrap();
        let mut a = lease(&ws, Duration::from_millis(100));
        let id = job(&ws, "1700000000_3_1");
        let dir = ws.job_dir(State::Processing, &id);
        let old = Claim::new("gone-1-aa");
        write_claim(&FileIo::default(), &dir, &old).unwrap();
        // Someone claims it anew between the judgement and the rename.
        write_claim(&FileIo::default(), &dir, &Claim::new("other-2-bb")).unwrap();
        a.recover(&id, Some(old), "test");
        assert_eq!(ws.locate(&id), Some(State::Processing));
        assert_eq!(a.me.recovered.load(Ordering::SeqCst), 0);
    }

    fn record(id: &str, beat: u64, ttl_s: f64) -> MemberRecord {
        let mut r = test_record(&Membership::new(Duration::from_secs_f64(ttl_s)));
        r.member = id.to_owned();
        r.beat = beat;
        r
    }

    #[test]
    fn classify_judges_by_counters_on_this_clock_alone() {
        let mut seen = HashMap::new();
        let t0 = Instant::now();
        let recs = |a: u64, b: Option<u64>| {
            vec![
                ("a".to_owned(), Some(record("a", a, 1.0))),
                ("c".to_owned(), b.map(|b| record("c", b, 1.0))),
            ]
        };
        // First look: everyone alive but unconfirmed; "b" (me) is not the
        // smallest live id, so "a" reaps.
        let lv = classify(&mut seen, "b", recs(1, Some(1)), t0);
        assert!(lv.expired.is_empty() && !lv.reaper);
        assert_eq!(lv.unconfirmed, HashSet::from(["a".to_owned(), "c".to_owned()]));
        assert_eq!(lv.present.len(), 3);
        // "a" beats, "c" stands still; within the lease both are alive.
        let lv = classify(&mut seen, "b", recs(2, Some(1)), t0 + Duration::from_millis(500));
        assert!(lv.expired.is_empty());
        assert_eq!(lv.unconfirmed, HashSet::from(["c".to_owned()]));
        // "a" stands still past its lease: expired, and "b" is the reaper.
        // "c"'s record is unreadable now: unconfirmed, never expired.
        let lv = classify(&mut seen, "b", recs(2, None), t0 + Duration::from_millis(1600));
        assert_eq!(lv.expired.keys().collect::<Vec<_>>(), ["a"]);
        assert!(lv.reaper);
        assert!(lv.unconfirmed.contains("c"));
        // A member whose record is gone is forgotten.
        let lv = classify(&mut seen, "b", vec![], t0 + Duration::from_secs(2));
        assert!(seen.is_empty() && lv.reaper && lv.expired.is_empty());
    }
}
