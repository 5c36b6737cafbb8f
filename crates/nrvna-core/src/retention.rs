//! Retention: which finished jobs to remove, and removing them so that no
//! reader ever sees half a job.
//!
//! A [`Policy`] (ages per state, a job count, a byte total) is applied by
//! [`select`], a pure function over the finished jobs, oldest first. Only
//! `output/` and `failed/` are ever listed; a job pinned with the tag
//! `keep`, and a gateway batch's line while its batch is not finished (or
//! its output is retrievable), are never selected ([`Guard`]). [`remove`]
//! takes each job out of its state directory with one rename into
//! `WS/.nrvna-trash/` and deletes it there;
//! [`empty_trash`] finishes what a crash interrupted. `nrvnad`'s retention
//! thread and `flw --prune` both run [`prune`], one at a time per workspace
//! ([`PruneLock`]).

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::files::META_FILE;
use crate::fsio::{lock_file, read_optional};
use crate::id::JobId;
use crate::meta::{Meta, MAX_META_BYTES};
use crate::state::State;
use crate::workspace::{rename_noreplace, Workspace};

/// Where removed jobs wait to be deleted (inside WS: one filesystem, so a
/// removal is one rename).
pub const TRASH_DIR: &str = ".nrvna-trash";
/// Held (flock) by whoever prunes the workspace: one pruner at a time.
pub const PRUNE_LOCK_FILE: &str = ".nrvna-prune.lock";
/// The tag that pins a job: retention never removes it.
pub const KEEP_TAG: &str = "keep";
/// Where the gateway keeps its batch records (`batch_<J>.json`).
const BATCH_RECORDS: &str = "api/batches";

/// What to remove. Every field `None` keeps everything (the default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Remove done jobs finished longer ago than this.
    pub done: Option<Duration>,
    /// Remove failed jobs finished longer ago than this.
    pub failed: Option<Duration>,
    /// Keep at most this many finished jobs (the oldest go first).
    pub max_jobs: Option<u64>,
    /// Keep at most this many bytes of finished jobs (the oldest go first).
    pub max_bytes: Option<u64>,
}

impl Policy {
    /// Whether it keeps everything.
    pub fn keeps_all(&self) -> bool {
        *self == Policy::default()
    }

    /// Whether [`select`] needs the jobs' sizes.
    pub fn needs_sizes(&self) -> bool {
        self.max_bytes.is_some()
    }

    /// The policy in words, for logs.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(d) = self.done {
            parts.push(format!("done jobs older than {}", format_duration(d)));
        }
        if let Some(d) = self.failed {
            parts.push(format!("failed jobs older than {}", format_duration(d)));
        }
        if let Some(n) = self.max_jobs {
            parts.push(format!("the oldest beyond {n} finished jobs"));
        }
        if let Some(b) = self.max_bytes {
            parts.push(format!("the oldest beyond {b} bytes of finished jobs"));
        }
        if parts.is_empty() {
            return "keep every finished job".into();
        }
        format!("remove {}", parts.join(", "))
    }
}

/// A finished job as retention sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    pub id: JobId,
    /// [`State::Done`] or [`State::Failed`].
    pub state: State,
    /// When it finished: its directory's mtime (the finishing rename).
    pub finished: SystemTime,
    /// Bytes of its files (0 when the policy needs no sizes).
    pub bytes: u64,
}

/// What the policy removes from `jobs`, oldest first: the jobs older than
/// their state's age, then, while more than `max_jobs` jobs or `max_bytes`
/// bytes remain, the oldest of the rest. `protected` is asked only about
/// jobs the policy would remove; a protected job stays (and counts).
pub fn select(
    mut jobs: Vec<Finished>,
    policy: &Policy,
    now: SystemTime,
    mut protected: impl FnMut(&Finished) -> bool,
) -> Vec<Finished> {
    if policy.keeps_all() {
        return Vec::new();
    }
    jobs.retain(|j| j.state.is_terminal());
    jobs.sort_by(|a, b| a.finished.cmp(&b.finished).then_with(|| a.id.cmp(&b.id)));
    let mut count = jobs.len() as u64;
    let mut bytes: u64 = jobs.iter().map(|j| j.bytes).sum();
    let mut out = Vec::new();
    for j in jobs {
        let age = now.duration_since(j.finished).unwrap_or_default();
        let limit = match j.state {
            State::Done => policy.done,
            _ => policy.failed,
        };
        let expired = limit.is_some_and(|l| age > l);
        let over = policy.max_jobs.is_some_and(|n| count > n) || policy.max_bytes.is_some_and(|b| bytes > b);
        if (expired || over) && !protected(&j) {
            count -= 1;
            bytes -= j.bytes;
            out.push(j);
        }
    }
    out
}

/// The finished jobs in `states` (only done and failed are ever listed):
/// names and directory mtimes, and sizes when `sizes` is set. A job that
/// leaves while it is listed is skipped.
pub fn list_finished(ws: &Workspace, states: &[State], sizes: bool) -> io::Result<Vec<Finished>> {
    let mut out = Vec::new();
    for &state in states.iter().filter(|s| s.is_terminal()) {
        let mut ids = Vec::new();
        ws.scan(state, |id| ids.push(id), |_| {})?;
        for id in ids {
            let dir = ws.job_dir(state, &id);
            let Ok(md) = fs::symlink_metadata(&dir) else { continue };
            if !md.is_dir() {
                continue;
            }
            let Ok(finished) = md.modified() else { continue };
            let bytes = if sizes { dir_bytes(&dir) } else { 0 };
            out.push(Finished {
                id,
                state,
                finished,
                bytes,
            });
        }
    }
    Ok(out)
}

/// The bytes of the files in a job directory and its subdirectories
/// (images/, audio/); what cannot be read counts 0.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(rd) = fs::read_dir(dir) else { return 0 };
    rd.filter_map(|e| e.ok())
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(_) => e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

/// Decides what retention must never remove, reading only the meta.json of
/// the jobs asked about and each batch record once.
pub struct Guard<'a> {
    ws: &'a Workspace,
    /// Unix seconds now (for batch output windows).
    now: i64,
    /// Batch record file name -> why its lines stay (`None`: they may go).
    batches: HashMap<String, Option<&'static str>>,
    /// Whether the gateway keeps batch records here at all.
    any_batches: bool,
    /// The `batch_*` tags of jobs still staged, queued or running (a
    /// `wrk --batch` batch, which has no record, is unfinished while one
    /// of its jobs is); read once, when first needed.
    unfinished_tags: Option<HashSet<String>>,
}

/// Why a line of an unfinished batch stays.
pub const KEPT_BATCH: &str = "its batch is not finished";
/// Why a line of a batch whose output is still retrievable stays.
pub const KEPT_OUTPUT: &str = "its batch output has not expired";
/// Why a pinned job stays.
pub const KEPT_PINNED: &str = "pinned";

impl<'a> Guard<'a> {
    pub fn new(ws: &'a Workspace, now: SystemTime) -> Guard<'a> {
        Guard {
            ws,
            now: now
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0),
            batches: HashMap::new(),
            any_batches: ws.file(BATCH_RECORDS).is_dir(),
            unfinished_tags: None,
        }
    }

    /// Why `j` must stay, or `None` when it may go: pinned (the tag
    /// `keep`), or a line of a gateway batch (its job id is `<J>_<6
    /// digits>` with a record `api/batches/batch_<J>.json`, or it carries
    /// the tag `batch_<J>` of such a record) that is not finished or whose
    /// output is retrievable until the record's `output_expires_at`, or a
    /// job of a `wrk --batch` batch (its `batch_*` tag) while another job
    /// with that tag is staged, queued or running.
    pub fn why_kept(&mut self, j: &Finished) -> Option<&'static str> {
        let meta = read_optional(&self.ws.job_dir(j.state, &j.id).join(META_FILE), MAX_META_BYTES)
            .ok()
            .flatten()
            .and_then(|b| Meta::parse(&b).ok());
        if let Some(m) = &meta {
            if m.tags.iter().any(|t| t == KEEP_TAG) {
                return Some(KEPT_PINNED);
            }
            for t in m.tags.iter().filter(|t| t.starts_with("batch_")) {
                if let Some(why) = self.batch_holds(t) {
                    return Some(why);
                }
                if self.unfinished_tags().contains(t) {
                    return Some(KEPT_BATCH);
                }
            }
        }
        line_batch(j.id.as_str()).and_then(|batch| self.batch_holds(&format!("batch_{batch}")))
    }

    fn unfinished_tags(&mut self) -> &HashSet<String> {
        let ws = self.ws;
        self.unfinished_tags.get_or_insert_with(|| {
            let mut tags = HashSet::new();
            for s in [State::Writing, State::Ready, State::Processing] {
                for id in ws.list(s).unwrap_or_default() {
                    let meta = read_optional(&ws.job_dir(s, &id).join(META_FILE), MAX_META_BYTES)
                        .ok()
                        .flatten()
                        .and_then(|b| Meta::parse(&b).ok());
                    if let Some(m) = meta {
                        tags.extend(m.tags.into_iter().filter(|t| t.starts_with("batch_")));
                    }
                }
            }
            tags
        })
    }

    /// Why the lines of `api/batches/<batch>.json` stay: the batch is not
    /// finished (none of `completed_at`, `cancelled_at`, `failed_at`,
    /// `expired_at`; an unreadable record counts as unfinished), or its
    /// `output_expires_at` (unix seconds) is still ahead.
    fn batch_holds(&mut self, batch: &str) -> Option<&'static str> {
        if !self.any_batches {
            return None;
        }
        if let Some(&why) = self.batches.get(batch) {
            return why;
        }
        let path = self.ws.file(BATCH_RECORDS).join(format!("{batch}.json"));
        let why = match read_optional(&path, 16 << 20) {
            Ok(None) => None,
            Ok(Some(b)) => match serde_json::from_slice::<Value>(&b) {
                Ok(v) => {
                    let finished = ["completed_at", "cancelled_at", "failed_at", "expired_at"]
                        .iter()
                        .any(|k| v.get(k).is_some_and(|x| !x.is_null()));
                    let output_kept = v
                        .get("output_expires_at")
                        .and_then(Value::as_i64)
                        .is_some_and(|t| t > self.now);
                    match (finished, output_kept) {
                        (false, _) => Some(KEPT_BATCH),
                        (true, true) => Some(KEPT_OUTPUT),
                        (true, false) => None,
                    }
                }
                Err(_) => Some(KEPT_BATCH),
            },
            Err(_) => Some(KEPT_BATCH),
        };
        self.batches.insert(batch.to_owned(), why);
        why
    }
}

/// `J` of a batch line's job id `<J>_<6 digits>`.
fn line_batch(id: &str) -> Option<&str> {
    let (j, n) = id.rsplit_once('_')?;
    (n.len() == 6 && n.bytes().all(|b| b.is_ascii_digit()) && !j.is_empty()).then_some(j)
}

/// The pruner's lock on a workspace, released when dropped (or by the
/// kernel when the process dies).
pub struct PruneLock {
    _file: File,
}

impl PruneLock {
    /// Takes the lock; `Ok(None)` when another pruner holds it and `wait`
    /// is false.
    pub fn acquire(ws: &Workspace, wait: bool) -> io::Result<Option<PruneLock>> {
        Ok(lock_file(&ws.file(PRUNE_LOCK_FILE), wait)?.map(|f| PruneLock { _file: f }))
    }
}

/// The trash directory (created when missing).
fn trash(ws: &Workspace) -> io::Result<PathBuf> {
    let t = ws.file(TRASH_DIR);
    match fs::create_dir(&t) {
        Ok(()) => ws.io().sync_dir(ws.root())?,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    Ok(t)
}

/// Deletes everything in the trash (what a crashed pruner left); returns
/// how many entries it deleted. Hold the [`PruneLock`].
pub fn empty_trash(ws: &Workspace) -> io::Result<usize> {
    let t = ws.file(TRASH_DIR);
    let rd = match fs::read_dir(&t) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut n = 0;
    for e in rd {
        let p = e?.path();
        let r = match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(&p),
            Ok(_) => fs::remove_file(&p),
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => n += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io::Error::new(e.kind(), format!("deleting {}: {e}", p.display()))),
        }
    }
    Ok(n)
}

/// Removes `jobs`: each leaves its state directory in one rename into the
/// trash; once the state directories and the trash are synced, the trash
/// is deleted. Returns the ids removed (a job already gone is skipped).
/// Hold the [`PruneLock`].
pub fn remove(ws: &Workspace, jobs: &[Finished]) -> io::Result<Vec<JobId>> {
    let t = trash(ws)?;
    let mut moved = Vec::new();
    let mut touched = [false; 2];
    for j in jobs {
        let src = ws.job_dir(j.state, &j.id);
        let dst = t.join(j.id.as_str());
        let mut r = rename_noreplace(&src, &dst);
        if matches!(&r, Err(e) if e.raw_os_error() == Some(libc::EEXIST) || e.raw_os_error() == Some(libc::ENOTEMPTY)) {
            // A leftover of an earlier removal of the same id.
            fs::remove_dir_all(&dst)?;
            r = rename_noreplace(&src, &dst);
        }
        match r {
            Ok(()) => {
                touched[usize::from(j.state == State::Failed)] = true;
                moved.push(j.id.clone());
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("moving job {} from {}/ into {TRASH_DIR}/: {e}", j.id, j.state.dir()),
                ))
            }
        }
    }
    // The renames are durable before anything inside is deleted: after a
    // power loss a job is whole in its state directory or in the trash.
    for (i, s) in [State::Done, State::Failed].into_iter().enumerate() {
        if touched[i] {
            ws.sync_state_dir(s)?;
        }
    }
    ws.io().sync_dir(&t)?;
    for id in &moved {
        match fs::remove_dir_all(t.join(id.as_str())) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("deleting job {id} in {TRASH_DIR}/: {e}"),
                ))
            }
        }
    }
    Ok(moved)
}

/// What a prune round did.
#[derive(Debug, Default)]
pub struct Pruned {
    /// Removed (or, dry run, to be removed), oldest first.
    pub removed: Vec<Finished>,
    /// Finished jobs seen.
    pub seen: usize,
    /// Jobs the policy would remove that stayed, by reason.
    pub kept: HashMap<&'static str, usize>,
    /// Entries of an interrupted earlier round deleted from the trash.
    pub trash_emptied: usize,
}

/// How a round runs.
pub struct Round<'a> {
    /// The states listed (a subset of done and failed).
    pub states: &'a [State],
    /// Only select, remove nothing.
    pub dry_run: bool,
    /// Jobs removed per step; `stop` is asked between steps.
    pub chunk: usize,
    /// Asked between steps: stop early (the daemon's shutdown).
    pub stop: &'a dyn Fn() -> bool,
    /// Called once the round knows what it removes: how many jobs, of how
    /// many finished jobs seen.
    pub on_selected: &'a mut dyn FnMut(usize, usize),
    /// Called with each step's removed ids.
    pub on_removed: &'a mut dyn FnMut(&[Finished]),
}

/// One round: empties the trash, lists, selects, removes in steps. Hold
/// the [`PruneLock`].
pub fn prune(ws: &Workspace, policy: &Policy, now: SystemTime, round: Round<'_>) -> io::Result<Pruned> {
    let mut out = Pruned::default();
    if !round.dry_run {
        out.trash_emptied = empty_trash(ws)?;
    }
    let jobs = list_finished(ws, round.states, policy.needs_sizes())?;
    out.seen = jobs.len();
    let mut guard = Guard::new(ws, now);
    let mut kept: HashMap<&'static str, usize> = HashMap::new();
    let chosen = select(jobs, policy, now, |j| match guard.why_kept(j) {
        Some(why) => {
            *kept.entry(why).or_default() += 1;
            true
        }
        None => false,
    });
    out.kept = kept;
    (round.on_selected)(chosen.len(), out.seen);
    for step in chosen.chunks(round.chunk.max(1)) {
        if (round.stop)() {
            break;
        }
        if round.dry_run {
            (round.on_removed)(step);
            out.removed.extend_from_slice(step);
            continue;
        }
        let gone = remove(ws, step)?;
        let gone: Vec<Finished> = step.iter().filter(|j| gone.contains(&j.id)).cloned().collect();
        (round.on_removed)(&gone);
        out.removed.extend(gone);
    }
    Ok(out)
}

/// Parses a duration: a number with a unit, `ms`, `s`, `m`, `h`, `d` or
/// `w` (`90s`, `12h`, `7d`, `1.5h`); a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, unit) = t.split_at(t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len()));
    let scale = match unit {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        "w" => 604_800.0,
        _ => {
            return Err(format!(
                "{s:?} is not a duration: use a number and ms, s, m, h, d or w (90s, 12h, 7d)"
            ))
        }
    };
    match num.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n >= 0.0 && n * scale <= 1e11 => Ok(Duration::from_secs_f64(n * scale)),
        _ => Err(format!(
            "{s:?} is not a duration: use a number and ms, s, m, h, d or w (90s, 12h, 7d)"
        )),
    }
}

/// Parses a size: bytes, or a number with `K`, `M`, `G` or `T` (powers of
/// 1024; `500M`, `2G`, `1.5G`; a trailing `B`/`iB` is allowed).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, unit) = t.split_at(t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len()));
    let unit = unit.to_ascii_uppercase();
    let unit = unit
        .strip_suffix("IB")
        .or_else(|| unit.strip_suffix('B'))
        .unwrap_or(&unit);
    let scale: f64 = match unit {
        "" => 1.0,
        "K" => 1024.0,
        "M" => 1024.0 * 1024.0,
        "G" => 1024.0 * 1024.0 * 1024.0,
        "T" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => {
            return Err(format!(
                "{s:?} is not a size: use bytes or a number and K, M, G or T (500M, 2G)"
            ))
        }
    };
    match num.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n >= 0.0 && n * scale < 1.8e19 => Ok((n * scale) as u64),
        _ => Err(format!(
            "{s:?} is not a size: use bytes or a number and K, M, G or T (500M, 2G)"
        )),
    }
}

/// A duration as the flags spell it (`7d`, `12h`, `90s`).
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    for (unit, n) in [("w", 604_800), ("d", 86_400), ("h", 3600), ("m", 60)] {
        if s >= n && s % n == 0 && d.subsec_nanos() == 0 {
            return format!("{}{unit}", s / n);
        }
    }
    format!("{}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000;

    fn job(n: u32, state: State, age_s: u64, bytes: u64) -> Finished {
        Finished {
            id: JobId::parse(&format!("{n:03}")).unwrap(),
            state,
            finished: SystemTime::UNIX_EPOCH + Duration::from_secs(T0 - age_s),
            bytes,
        }
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(T0)
    }

    fn ids(v: &[Finished]) -> Vec<&str> {
        v.iter().map(|j| j.id.as_str()).collect()
    }

    #[test]
    fn the_default_policy_keeps_everything() {
        let jobs = vec![job(1, State::Done, 1_000_000, 10), job(2, State::Failed, 5, 10)];
        assert!(select(jobs, &Policy::default(), now(), |_| false).is_empty());
    }

    #[test]
    fn ages_apply_per_state_oldest_first() {
        let jobs = vec![
            job(1, State::Done, 50, 0),
            job(2, State::Done, 200, 0),
            job(3, State::Failed, 200, 0),
            job(4, State::Failed, 5000, 0),
            job(5, State::Done, 100, 0), // exactly the age: stays
        ];
        let p = Policy {
            done: Some(Duration::from_secs(100)),
            failed: Some(Duration::from_secs(1000)),
            ..Policy::default()
        };
        assert_eq!(ids(&select(jobs.clone(), &p, now(), |_| false)), ["004", "002"]);
        let only_failed = Policy {
            failed: Some(Duration::from_secs(100)),
            ..Policy::default()
        };
        assert_eq!(ids(&select(jobs, &only_failed, now(), |_| false)), ["004", "003"]);
    }

    #[test]
    fn max_jobs_and_max_bytes_remove_the_oldest_until_within() {
        let jobs: Vec<Finished> = (0..10).map(|i| job(i, State::Done, 100 - u64::from(i), 10)).collect();
        let p = Policy {
            max_jobs: Some(7),
            ..Policy::default()
        };
        assert_eq!(ids(&select(jobs.clone(), &p, now(), |_| false)), ["000", "001", "002"]);
        let p = Policy {
            max_bytes: Some(55),
            ..Policy::default()
        };
        assert_eq!(select(jobs.clone(), &p, now(), |_| false).len(), 5);
        // Both: the stricter wins.
        let p = Policy {
            max_jobs: Some(8),
            max_bytes: Some(35),
            ..Policy::default()
        };
        assert_eq!(select(jobs, &p, now(), |_| false).len(), 7);
    }

    #[test]
    fn a_protected_job_stays_and_counts_so_the_next_oldest_goes() {
        let jobs: Vec<Finished> = (0..5).map(|i| job(i, State::Done, 100 - u64::from(i), 1)).collect();
        let p = Policy {
            max_jobs: Some(3),
            ..Policy::default()
        };
        let mut asked = Vec::new();
        let out = select(jobs, &p, now(), |j| {
            asked.push(j.id.as_str().to_owned());
            j.id.as_str() == "000"
        });
        assert_eq!(ids(&out), ["001", "002"]);
        // Only jobs the policy would remove are asked about.
        assert_eq!(asked, ["000", "001", "002"]);
    }

    #[test]
    fn never_a_queued_or_running_job_and_a_future_mtime_is_age_zero() {
        let mut jobs = vec![job(1, State::Ready, 9999, 0), job(2, State::Processing, 9999, 0)];
        jobs.push(Finished {
            finished: now() + Duration::from_secs(60),
            ..job(3, State::Done, 0, 0)
        });
        let p = Policy {
            done: Some(Duration::ZERO),
            failed: Some(Duration::ZERO),
            max_jobs: Some(0),
            ..Policy::default()
        };
        assert_eq!(ids(&select(jobs, &p, now(), |_| false)), ["003"]);
    }

    #[test]
    fn durations_and_sizes_parse_as_the_flags_document() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("200ms"), Ok(Duration::from_millis(200)));
        assert!(parse_duration("7x").is_err() && parse_duration("-1d").is_err() && parse_duration("d").is_err());
        assert_eq!(parse_size("500M"), Ok(500 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert!(parse_size("2Q").is_err() && parse_size("").is_err());
        assert_eq!(format_duration(Duration::from_secs(604_800)), "1w");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
    }

    #[test]
    fn batch_line_ids_name_their_batch() {
        assert_eq!(line_batch("123_000123"), Some("123"));
        assert_eq!(line_batch("1_2_000001"), Some("1_2"));
        assert_eq!(line_batch("123_12345"), None);
        assert_eq!(line_batch("_000001"), None);
    }

    fn ws() -> (tempfile::TempDir, Workspace) {
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::create(d.path().join("ws")).unwrap();
        (d, ws)
    }

    fn finished_job(ws: &Workspace, state: State, id: &str, tags: &[&str]) -> JobId {
        let id = JobId::parse(id).unwrap();
        let dir = ws.job_dir(state, &id);
        fs::create_dir(&dir).unwrap();
        let mut m = Meta::new();
        m.tags = tags.iter().map(|t| t.to_string()).collect();
        fs::write(dir.join(META_FILE), m.to_bytes()).unwrap();
        fs::write(dir.join("result.txt"), b"hello").unwrap();
        id
    }

    /// One round of a policy that keeps no finished job (`max_jobs` 0),
    /// removing `chunk` at a time: the ids removed, and the outcome.
    fn prune_everything(ws: &Workspace, chunk: usize) -> (Vec<String>, Pruned) {
        let policy = Policy {
            max_jobs: Some(0),
            ..Policy::default()
        };
        let mut removed = Vec::new();
        let out = prune(
            ws,
            &policy,
            SystemTime::now(),
            Round {
                states: &[State::Done, State::Failed],
                dry_run: false,
                chunk,
                stop: &|| false,
                on_selected: &mut |_, _| {},
                on_removed: &mut |s| removed.extend(s.iter().map(|j| j.id.to_string())),
            },
        )
        .unwrap();
        (removed, out)
    }

    #[test]
    fn a_wrk_batch_is_kept_while_one_of_its_jobs_is_queued_or_running() {
        let (_d, ws) = ws();
        finished_job(&ws, State::Done, "1", &["batch_7"]);
        finished_job(&ws, State::Failed, "2", &["batch_7"]);
        finished_job(&ws, State::Done, "3", &["batch_8"]);
        // One job of batch_7 still runs; batch_8 is over.
        finished_job(&ws, State::Processing, "4", &["batch_7"]);
        let (removed, out) = prune_everything(&ws, 8);
        assert_eq!(removed, ["3"]);
        assert_eq!(out.kept.get(KEPT_BATCH), Some(&2));
    }

    #[test]
    fn pinned_jobs_and_lines_of_unfinished_batches_are_kept() {
        let (_d, ws) = ws();
        finished_job(&ws, State::Done, "1", &["keep"]);
        finished_job(&ws, State::Done, "2", &["x"]);
        finished_job(&ws, State::Done, "31_000001", &[]);
        finished_job(&ws, State::Failed, "32_000001", &[]);
        finished_job(&ws, State::Done, "5", &["batch_33"]);
        finished_job(&ws, State::Done, "34_000002", &[]);
        finished_job(&ws, State::Done, "35_000002", &[]);
        let recs = ws.file(BATCH_RECORDS);
        fs::create_dir_all(&recs).unwrap();
        fs::write(recs.join("batch_31.json"), br#"{"id":"batch_31","completed_at":null}"#).unwrap();
        fs::write(recs.join("batch_32.json"), br#"{"id":"batch_32","completed_at":17}"#).unwrap();
        fs::write(recs.join("batch_33.json"), br#"{"id":"batch_33"}"#).unwrap();
        // Finished, its output retrievable until a time ahead / passed.
        let ahead = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        let rec = |at: u64| format!(r#"{{"id":"x","completed_at":1,"output_expires_at":{at}}}"#);
        fs::write(recs.join("batch_34.json"), rec(ahead)).unwrap();
        fs::write(recs.join("batch_35.json"), rec(ahead - 7200)).unwrap();
        let (mut ids_removed, out) = prune_everything(&ws, 2);
        ids_removed.sort();
        assert_eq!(ids_removed, ["2", "32_000001", "35_000002"]);
        assert_eq!(out.seen, 7);
        assert_eq!(out.kept.get("pinned"), Some(&1));
        assert_eq!(out.kept.get(KEPT_BATCH), Some(&2));
        assert_eq!(out.kept.get(KEPT_OUTPUT), Some(&1));
        let mut left = ws.list(State::Done).unwrap();
        left.extend(ws.list(State::Failed).unwrap());
        let left: Vec<_> = left.iter().map(|i| i.to_string()).collect();
        assert_eq!(left, ["1", "31_000001", "34_000002", "5"]);
        // The trash is empty after a round.
        assert_eq!(fs::read_dir(ws.file(TRASH_DIR)).unwrap().count(), 0);
    }

    #[test]
    fn a_dry_run_removes_nothing_and_the_trash_is_emptied_first() {
        let (_d, ws) = ws();
        finished_job(&ws, State::Done, "7", &[]);
        let t = ws.file(TRASH_DIR).join("left");
        fs::create_dir_all(t.join("images")).unwrap();
        fs::write(t.join("images/x.png"), b"x").unwrap();
        let policy = Policy {
            done: Some(Duration::ZERO),
            ..Policy::default()
        };
        let later = SystemTime::now() + Duration::from_secs(5);
        let round = |dry_run| {
            prune(
                &ws,
                &policy,
                later,
                Round {
                    states: &[State::Done],
                    dry_run,
                    chunk: 10,
                    stop: &|| false,
                    on_selected: &mut |_, _| {},
                    on_removed: &mut |_| {},
                },
            )
            .unwrap()
        };
        let dry = round(true);
        assert_eq!(ids(&dry.removed), ["7"]);
        assert!(ws.job_dir(State::Done, &JobId::parse("7").unwrap()).is_dir());
        assert!(t.is_dir(), "a dry run leaves the trash alone");
        let real = round(false);
        assert_eq!((ids(&real.removed), real.trash_emptied), (vec!["7"], 1));
        assert!(ws.list(State::Done).unwrap().is_empty());
    }

    #[test]
    fn one_pruner_at_a_time() {
        let (_d, ws) = ws();
        let held = PruneLock::acquire(&ws, false).unwrap();
        assert!(held.is_some());
        assert!(PruneLock::acquire(&ws, false).unwrap().is_none());
        drop(held);
        assert!(PruneLock::acquire(&ws, false).unwrap().is_some());
    }
}
