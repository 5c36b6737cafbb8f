//! Shared workspaces (`nrvnad --shared`): many daemons, called members,
//! drain one workspace, on one host or many. Specified in
//! `docs/CONTRACT-EXTENSIONS.md`; in short:
//!
//! - `WS/.nrvna-members/MEMBER.json`: a member's record (host, boot id,
//!   pid, model, lease, a heartbeat counter `beat`), rewritten (NAME.tmp +
//!   rename) at every heartbeat. Liveness is judged by watching `beat`
//!   change on the watcher's own monotonic clock, never by comparing clocks
//!   across hosts.
//! - `WS/.nrvna-members/MEMBER.stop`: a request that the member stop.
//! - `WS/processing/ID/.nrvna-claim`: `MEMBER TOKEN`, which member holds the
//!   job, written right after the claiming rename. A member checks that the
//!   file still holds its token before it publishes a result (fencing).

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::fileio::FileIo;
use crate::fsio::{clear_entry, read_limited};
use crate::workspace::Workspace;

/// The members' directory, at the workspace root.
pub const MEMBERS_DIR: &str = ".nrvna-members";
/// The claim record inside a job directory in `processing/`.
pub const CLAIM_FILE: &str = ".nrvna-claim";
/// The largest member record a reader accepts.
pub const MAX_RECORD_BYTES: u64 = 256 * 1024;

/// A member's record (`.nrvna-members/MEMBER.json`). Unknown keys are kept.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub member: String,
    pub host: String,
    #[serde(default)]
    pub boot_id: String,
    #[serde(default)]
    pub pid: u32,
    /// Inode of the member's pid namespace (`/proc/self/ns/pid`): a pid is
    /// only meaningful to processes in the same namespace.
    #[serde(default)]
    pub pid_ns: u64,
    #[serde(default)]
    pub model: String,
    /// The names a job's `params.json` `model` may use to pick this member.
    #[serde(default)]
    pub serves: Vec<String>,
    #[serde(default)]
    pub engine: String,
    #[serde(default)]
    pub workers: u32,
    #[serde(default)]
    pub started_at: String,
    /// The member's lease: a watcher that sees `beat` unchanged for this
    /// long (on its own clock) takes the member's jobs back.
    pub lease_ttl_s: f64,
    /// Heartbeat counter, one more at every heartbeat.
    pub beat: u64,
    /// The writer's wall clock at the last heartbeat (for people; never
    /// used to judge liveness).
    #[serde(default)]
    pub beat_at: String,
    /// Job ids this member holds.
    #[serde(default)]
    pub running: Vec<String>,
    #[serde(default)]
    pub version: String,
    /// `starting` or `ready`; absent (or not a string) reads as ready. The
    /// last named field, so a record's keys keep the order they had when
    /// `state` was an extra written first.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "state_if_string"
    )]
    pub state: Option<MemberState>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A member's stage (`state` in its record), written as its word.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberState {
    /// Loading its model; it claims no job yet.
    Starting,
    /// Serving jobs.
    Ready,
    /// A word this version does not know (another version's record).
    Other(String),
}

impl MemberState {
    pub fn parse(word: &str) -> MemberState {
        match word {
            "starting" => MemberState::Starting,
            "ready" => MemberState::Ready,
            other => MemberState::Other(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            MemberState::Starting => "starting",
            MemberState::Ready => "ready",
            MemberState::Other(word) => word,
        }
    }
}

impl std::fmt::Display for MemberState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for MemberState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for MemberState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|w| MemberState::parse(&w))
    }
}

/// A record's `state`: a state when it is a string, else none (as before
/// it was typed, when a record with any `state` value still parsed).
fn state_if_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<MemberState>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(w) => Some(MemberState::parse(&w)),
        _ => None,
    })
}

/// One line per model of a daemon's `models` list (`.nrvnad.info` of an
/// nrvnad serving several models), for status displays: `ID: loaded (~240
/// MiB), 12 queued, 3 running, 2 loads`.
pub fn model_lines(models: &Value) -> Vec<String> {
    let Some(list) = models.as_array() else {
        return Vec::new();
    };
    list.iter()
        .map(|m| {
            let n = |k: &str| m.get(k).and_then(Value::as_u64).unwrap_or(0);
            let mib = n("bytes") as f64 / (1024.0 * 1024.0);
            format!(
                "{}{}: {} (~{mib:.0} MiB), {} queued, {} running, {} loads",
                m.get("id").and_then(Value::as_str).unwrap_or("?"),
                if m.get("default") == Some(&Value::Bool(true)) {
                    " (default)"
                } else {
                    ""
                },
                if m.get("loaded") == Some(&Value::Bool(true)) {
                    "loaded"
                } else {
                    "not loaded"
                },
                n("queued"),
                n("running"),
                n("loads"),
            )
        })
        .collect()
}

/// The extra key of a member record that lists the paths of every model
/// the member serves (a daemon serving several; see [`MemberRecord::models`]).
pub const MODELS_KEY: &str = "models";

impl MemberRecord {
    /// The paths of every model this member serves: its record's
    /// `models` list when it has one (`nrvnad --models`, several MODELs),
    /// else its one `model`.
    pub fn models(&self) -> Vec<String> {
        let listed: Vec<String> = self
            .extra
            .get(MODELS_KEY)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
            .unwrap_or_default();
        if listed.is_empty() {
            vec![self.model.clone()]
        } else {
            listed
        }
    }

    /// Whether `host` and `boot_id` are this machine's (a pid in the record
    /// may then name a process here, given the same pid namespace).
    pub fn is_this_host(&self) -> bool {
        self.host == host_name() && self.boot_id == boot_id()
    }

    /// Whether the record's pid can be signalled from this process.
    pub fn pid_is_ours_to_see(&self) -> bool {
        self.is_this_host() && self.pid_ns != 0 && self.pid_ns == pid_ns()
    }
}

impl MemberRecord {
    /// Seconds since the last heartbeat, by this host's wall clock against
    /// the writer's: for people and probes only (clocks may disagree; the
    /// members themselves never judge liveness this way).
    pub fn heartbeat_age_s(&self) -> Option<f64> {
        let at = crate::time::parse_iso8601_micros(&self.beat_at)?;
        let now = crate::time::parse_iso8601_micros(&crate::time::iso8601_utc(std::time::SystemTime::now()))?;
        Some(((now - at) as f64 / 1e6).max(0.0))
    }

    /// `starting` (loading its model) or `ready` (also when the record
    /// says nothing).
    pub fn state(&self) -> MemberState {
        self.state.clone().unwrap_or(MemberState::Ready)
    }

    /// One line for people: id, host, pid, state, model, workers,
    /// heartbeat age and the jobs it runs.
    pub fn summary(&self) -> String {
        let age = self
            .heartbeat_age_s()
            .map(|a| format!("{a:.1} s ago"))
            .unwrap_or_else(|| "never".into());
        let stale = if self.looks_alive() { "" } else { " (past its lease)" };
        format!(
            "member {} on {} (pid {}): {}, model {}, {} workers, heartbeat {age}{stale}, running {}{}",
            self.member,
            self.host,
            self.pid,
            self.state(),
            self.model,
            self.workers,
            self.running.len(),
            if self.running.is_empty() {
                String::new()
            } else {
                format!(" ({})", self.running.join(", "))
            }
        )
    }

    /// Ready, with a heartbeat younger than its lease (by the wall clock).
    pub fn looks_alive(&self) -> bool {
        self.heartbeat_age_s().is_some_and(|a| a < self.lease_ttl_s)
    }
}

/// `WS/.nrvna-members/`.
pub fn members_dir(ws: &Workspace) -> PathBuf {
    ws.root().join(MEMBERS_DIR)
}

fn valid_member_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Creates `WS/.nrvna-members/` if needed.
pub fn ensure_members_dir(ws: &Workspace) -> io::Result<PathBuf> {
    let d = members_dir(ws);
    fs::create_dir_all(&d)?;
    Ok(d)
}

/// Writes (replaces) a member's record.
pub fn write_member(ws: &Workspace, rec: &MemberRecord) -> io::Result<()> {
    if !valid_member_id(&rec.member) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{:?} is not a member id", rec.member),
        ));
    }
    let d = ensure_members_dir(ws)?;
    let mut line = serde_json::to_vec(rec).map_err(io::Error::other)?;
    line.push(b'\n');
    // Not fsynced: a heartbeat lost in a crash is a missed heartbeat.
    ws.io()
        .write_atomic_volatile(&d, &format!("{}.json", rec.member), &line)
}

/// Reads one member's record.
pub fn read_member(ws: &Workspace, member: &str) -> Result<MemberRecord, String> {
    if !valid_member_id(member) {
        return Err(format!("{member:?} is not a member id"));
    }
    let p = members_dir(ws).join(format!("{member}.json"));
    let b = read_limited(&p, MAX_RECORD_BYTES).map_err(|e| format!("{}: {e}", p.display()))?;
    serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", p.display()))
}

/// Every member id with a record, sorted.
pub fn member_ids(ws: &Workspace) -> Vec<String> {
    let Ok(entries) = fs::read_dir(members_dir(ws)) else {
        return Vec::new();
    };
    let mut ids: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().into_string().ok()?;
            let id = n.strip_suffix(".json")?;
            valid_member_id(id).then(|| id.to_owned())
        })
        .collect();
    ids.sort();
    ids
}

/// Every readable member record, sorted by id; unreadable ones are skipped
/// (a record is replaced by rename, so a reader never sees half of one).
pub fn list_members(ws: &Workspace) -> Vec<MemberRecord> {
    member_ids(ws)
        .iter()
        .filter_map(|id| read_member(ws, id).ok())
        .collect()
}

/// Removes a member's record and its stop request (the member itself, as
/// it leaves).
pub fn remove_member(ws: &Workspace, member: &str) -> io::Result<()> {
    remove_stop_request(ws, member)?;
    remove_record(ws, member)
}

/// Removes a member's record only (a member reaping an expired one: if that
/// one was merely paused, it writes the record again, and a stop request
/// made meanwhile must still reach it).
pub fn remove_record(ws: &Workspace, member: &str) -> io::Result<()> {
    remove_named(ws, member, "json")
}

/// Removes a member's stop request.
pub fn remove_stop_request(ws: &Workspace, member: &str) -> io::Result<()> {
    remove_named(ws, member, "stop")
}

fn remove_named(ws: &Workspace, member: &str, ext: &str) -> io::Result<()> {
    if !valid_member_id(member) {
        return Ok(());
    }
    match fs::remove_file(members_dir(ws).join(format!("{member}.{ext}"))) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Asks a member to stop (it checks at every heartbeat).
pub fn request_stop(ws: &Workspace, member: &str) -> io::Result<()> {
    if !valid_member_id(member) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a member id"));
    }
    let d = ensure_members_dir(ws)?;
    ws.io().write_atomic(&d, &format!("{member}.stop"), b"stop\n")
}

/// Whether someone asked `member` to stop.
pub fn stop_requested(ws: &Workspace, member: &str) -> bool {
    valid_member_id(member) && members_dir(ws).join(format!("{member}.stop")).exists()
}

/// Who holds a claimed job: a member and the token of this one claim (a
/// job claimed again, after recovery, gets a new token).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub member: String,
    pub token: String,
}

impl Claim {
    /// A fresh claim by `member`.
    pub fn new(member: &str) -> Claim {
        Claim {
            member: member.to_owned(),
            token: format!("{:016x}", random_u64()),
        }
    }

    fn parse(s: &str) -> Option<Claim> {
        let mut it = s.split_whitespace();
        let (m, t) = (it.next()?, it.next()?);
        valid_member_id(m).then(|| Claim {
            member: m.to_owned(),
            token: t.to_owned(),
        })
    }
}

/// Records `claim` in a job directory (replacing whatever is there).
pub fn write_claim(io: &FileIo, job_dir: &Path, claim: &Claim) -> io::Result<()> {
    clear_entry(job_dir, CLAIM_FILE)?;
    // Not fsynced: a claim lost in a crash leaves a job without a holder,
    // which members recover once its lease would have expired.
    io.write_atomic_volatile(
        job_dir,
        CLAIM_FILE,
        format!("{} {}\n", claim.member, claim.token).as_bytes(),
    )
}

/// The claim recorded in a job directory, if any (never follows a link).
pub fn read_claim(job_dir: &Path) -> Option<Claim> {
    let b = read_limited(&job_dir.join(CLAIM_FILE), 1024).ok()?;
    Claim::parse(std::str::from_utf8(&b).ok()?)
}

/// This machine's host name.
pub fn host_name() -> String {
    let u = rustix::system::uname();
    u.nodename().to_string_lossy().into_owned()
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), empty if unknown.
pub fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The inode of this process's pid namespace, 0 if unknown.
pub fn pid_ns() -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::metadata("/proc/self/ns/pid").map(|m| m.ino()).unwrap_or(0)
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    if fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok()
    {
        return u64::from_le_bytes(b);
    }
    // No /dev/urandom: the hasher's per-process random keys, plus time.
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// A new member id: `HOST-PID-RANDOM`, unique even where hosts share a
/// name or pids collide (pid namespaces).
pub fn new_member_id() -> String {
    let host: String = host_name()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
        .take(64)
        .collect();
    let host = if host.is_empty() { "host".to_owned() } else { host };
    format!("{host}-{}-{:08x}", std::process::id(), random_u64() as u32)
}

/// The kind of network filesystem `path` is on, if it is one (inotify sees
/// no writes made by other hosts there).
pub fn network_fs(path: &Path) -> Option<&'static str> {
    let st = rustix::fs::statfs(path).ok()?;
    // f_type magic numbers from statfs(2) / linux/magic.h.
    #[allow(clippy::unnecessary_cast)]
    let kind = match st.f_type as i64 {
        0x6969 => "nfs",
        0xFF53_4D42 => "cifs",
        0xFE53_4D42 => "smb2",
        0x517B => "smb",
        0x00C3_6400 => "ceph",
        0x0BD0_0BD0 => "lustre",
        0x4750_4653 => "gpfs",
        0x0102_1997 => "9p",
        0x5346_414F => "afs",
        0x6B41_4653 => "afs",
        0x0116_1970 => "gfs2",
        0x7461_636F => "ocfs2",
        0x6573_5546 => "fuse",
        _ => return None,
    };
    Some(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_is_its_word_on_disk_and_any_other_value_still_parses() {
        let base = r#"{"member":"m","host":"h","boot_id":"","pid":0,"pid_ns":0,"model":"","serves":[],"engine":"","workers":0,"started_at":"","lease_ttl_s":30.0,"beat":1,"beat_at":"","running":[],"version":"""#;
        for (state, want) in [
            (r#","state":"starting""#, MemberState::Starting),
            (r#","state":"ready""#, MemberState::Ready),
            (r#","state":"draining""#, MemberState::Other("draining".into())),
            ("", MemberState::Ready),
            (r#","state":7"#, MemberState::Ready),
        ] {
            let text = format!(r#"{base}{state},"model_name":"x"}}"#);
            let r: MemberRecord = serde_json::from_str(&text).unwrap();
            assert_eq!(r.state(), want, "{text}");
            assert_eq!(r.extra.get("model_name"), Some(&Value::from("x")));
            if !state.ends_with('7') {
                // Written back byte for byte, `state` where it was.
                assert_eq!(serde_json::to_string(&r).unwrap(), text);
            }
        }
    }

    #[test]
    fn records_round_trip_and_keep_unknown_keys() {
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::create(d.path()).unwrap();
        assert!(list_members(&ws).is_empty());
        let mut rec = MemberRecord {
            member: new_member_id(),
            host: host_name(),
            boot_id: boot_id(),
            pid: std::process::id(),
            pid_ns: pid_ns(),
            lease_ttl_s: 30.0,
            beat: 7,
            ..MemberRecord::default()
        };
        rec.extra.insert("future".into(), Value::from(1));
        write_member(&ws, &rec).unwrap();
        let back = read_member(&ws, &rec.member).unwrap();
        assert_eq!(back, rec);
        assert!(back.is_this_host() && back.pid_is_ours_to_see());
        assert_eq!(member_ids(&ws), vec![rec.member.clone()]);
        assert!(!stop_requested(&ws, &rec.member));
        request_stop(&ws, &rec.member).unwrap();
        assert!(stop_requested(&ws, &rec.member));
        remove_member(&ws, &rec.member).unwrap();
        assert!(list_members(&ws).is_empty());
        assert!(!stop_requested(&ws, &rec.member));
    }

    #[test]
    fn member_ids_are_file_name_safe_and_distinct() {
        let a = new_member_id();
        let b = new_member_id();
        assert_ne!(a, b);
        assert!(valid_member_id(&a), "{a}");
        assert!(!valid_member_id("../x") && !valid_member_id(".hidden") && !valid_member_id(""));
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::create(d.path()).unwrap();
        let bad = MemberRecord {
            member: "../escape".into(),
            ..MemberRecord::default()
        };
        assert!(write_member(&ws, &bad).is_err());
    }

    #[test]
    fn claims_name_their_holder_and_a_new_claim_replaces_the_old() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read_claim(d.path()), None);
        let a = Claim::new("host-1-aa");
        write_claim(&FileIo::default(), d.path(), &a).unwrap();
        assert_eq!(read_claim(d.path()), Some(a.clone()));
        let b = Claim::new("host-2-bb");
        write_claim(&FileIo::default(), d.path(), &b).unwrap();
        let got = read_claim(d.path()).unwrap();
        assert_eq!(got, b);
        assert_ne!(got, a);
        // A planted symlink is not followed.
        fs::remove_file(d.path().join(CLAIM_FILE)).unwrap();
        let target = d.path().join("elsewhere");
        fs::write(&target, "host-1-aa tok\n").unwrap();
        std::os::unix::fs::symlink(&target, d.path().join(CLAIM_FILE)).unwrap();
        assert_eq!(read_claim(d.path()), None);
    }

    #[test]
    fn a_local_filesystem_is_not_a_network_one() {
        let d = tempfile::tempdir().unwrap();
        // The test machine's temp dir is local (tmpfs or a disk).
        assert_eq!(network_fs(d.path()), None);
    }
}
