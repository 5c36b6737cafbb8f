//! Webhooks, the pure half: which event a finished job or batch makes, its
//! deterministic id and body (as OpenAI sends them), the Standard Webhooks
//! signature, `whsec_` secrets, the retry schedule, and the outbox files in
//! `WS/.nrvna-webhooks/` (docs/CONTRACT-EXTENSIONS.md). Delivery over HTTP
//! is the `nrvna-hooks` crate's.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::fileio::FileIo;
use crate::fsio::read_optional;
use crate::id::JobId;
use crate::meta::Meta;
use crate::state::State;
use crate::workspace::rename_noreplace;

/// Meta extra of a job that asks for job events: a URL (string), or `true`
/// for the workspace's endpoints.
pub const NOTIFY_KEY: &str = "notify";
/// Meta extras of a background response (the responses module writes them).
pub const RESPONSE_ID_KEY: &str = "response_id";
pub const BACKGROUND_KEY: &str = "background";

/// The directory of the outbox, under the workspace root.
pub const DIR: &str = ".nrvna-webhooks";
/// The largest outbox entry a reader accepts.
pub const MAX_ENTRY_BYTES: u64 = 4 << 20;

/// The kinds of events, OpenAI's names plus the job events of `wrk --notify`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    ResponseCompleted,
    ResponseFailed,
    ResponseCancelled,
    ResponseIncomplete,
    BatchCompleted,
    BatchFailed,
    BatchCancelled,
    BatchExpired,
    JobDone,
    JobFailed,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::ResponseCompleted => "response.completed",
            EventType::ResponseFailed => "response.failed",
            EventType::ResponseCancelled => "response.cancelled",
            EventType::ResponseIncomplete => "response.incomplete",
            EventType::BatchCompleted => "batch.completed",
            EventType::BatchFailed => "batch.failed",
            EventType::BatchCancelled => "batch.cancelled",
            EventType::BatchExpired => "batch.expired",
            EventType::JobDone => "job.done",
            EventType::JobFailed => "job.failed",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an event goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The workspace's endpoints (`endpoints.json`).
    Workspace,
    /// One URL the job named (`wrk --notify URL`).
    Url(String),
}

/// An event a finished job or batch makes: its type, the id it is about
/// (`data.id`) and where it goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Derived {
    pub kind: EventType,
    pub subject: String,
    pub target: Target,
}

impl Derived {
    /// Its deterministic event id.
    pub fn id(&self) -> String {
        event_id(self.kind, &self.subject)
    }
}

/// `evt_` + 32 hex digits of SHA-256 over type and subject: the same event
/// derived again (after a crash, by another process) has the same id, so it
/// finds its outbox entry instead of making a second one.
pub fn event_id(kind: EventType, subject: &str) -> String {
    let d = Sha256::digest(format!("{}\n{subject}", kind.as_str()).as_bytes());
    let mut s = String::from("evt_");
    for b in &d[..16] {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The events of a finished job (`state` Done or Failed): a response event
/// for a background response (`background: true` and `response_id`), a job
/// event for a job with `notify`. Nothing for unfinished jobs.
pub fn job_events(id: &JobId, state: State, meta: &Meta) -> Vec<Derived> {
    let done = match state {
        State::Done => true,
        State::Failed => false,
        _ => return Vec::new(),
    };
    let mut out = Vec::new();
    let background = meta.extra(BACKGROUND_KEY).and_then(Value::as_bool) == Some(true);
    if let (true, Some(rid)) = (background, meta.extra_str(RESPONSE_ID_KEY)) {
        let kind = if done {
            if meta.extra_str("finish_reason") == Some("length") {
                EventType::ResponseIncomplete
            } else {
                EventType::ResponseCompleted
            }
        } else if meta.extra("cancelled").and_then(Value::as_bool) == Some(true) {
            EventType::ResponseCancelled
        } else {
            EventType::ResponseFailed
        };
        out.push(Derived {
            kind,
            subject: rid.to_owned(),
            target: Target::Workspace,
        });
    }
    let target = match meta.extra(NOTIFY_KEY) {
        Some(Value::Bool(true)) => Some(Target::Workspace),
        Some(Value::String(u)) => Some(Target::Url(u.clone())),
        _ => None,
    };
    if let Some(target) = target {
        out.push(Derived {
            kind: if done { EventType::JobDone } else { EventType::JobFailed },
            subject: id.as_str().to_owned(),
            target,
        });
    }
    out
}

/// The event body: `{"id","object":"event","created_at","type","data":{"id"}}`.
pub fn event_body(id: &str, kind: EventType, created_at: i64, subject: &str) -> String {
    serde_json::json!({
        "id": id,
        "object": "event",
        "created_at": created_at,
        "type": kind.as_str(),
        "data": {"id": subject},
    })
    .to_string()
}

/// Checks an endpoint: `http://host[:port]/path` (no TLS here: put a
/// TLS-terminating proxy in front for https). Returns why not.
pub fn check_url(url: &str) -> Result<(), String> {
    let rest = if let Some(r) = url.strip_prefix("http://") {
        r
    } else if url.starts_with("https://") {
        return Err(format!(
            "{url:?}: https is not supported by the built-in sender; deliver to a local \
             http:// endpoint (e.g. a TLS-terminating proxy)"
        ));
    } else {
        return Err(format!("{url:?} is not an http:// URL"));
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.contains('@') || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{url:?} has no usable host (expected http://HOST[:PORT]/PATH)"));
    }
    if let Some((_, port)) = host.rsplit_once(':').filter(|_| !host.ends_with(']')) {
        if port.parse::<u16>().is_err() {
            return Err(format!("{url:?}: port {port:?} is not a number from 0 to 65535"));
        }
    }
    Ok(())
}

/// A signing key: the bytes of a `whsec_<base64>` secret.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// Parses `whsec_` + base64 (as OpenAI's dashboard issues them).
    pub fn parse(s: &str) -> Result<Secret, String> {
        let b64 = s.trim().strip_prefix("whsec_").ok_or_else(|| {
            "the webhook secret must start with `whsec_` followed by base64 \
             (make one with: echo whsec_$(openssl rand -base64 32))"
                .to_owned()
        })?;
        let key = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("the webhook secret after `whsec_` is not base64 ({e}); make one with: echo whsec_$(openssl rand -base64 32)"))?;
        if key.len() < 16 {
            return Err(
                "the webhook secret is shorter than 16 bytes; make one with: echo whsec_$(openssl rand -base64 32)"
                    .into(),
            );
        }
        Ok(Secret(key))
    }

    /// `webhook-signature` of one attempt: `v1,` + base64 HMAC-SHA256 of
    /// `{id}.{timestamp}.{body}` (Standard Webhooks).
    pub fn sign(&self, id: &str, timestamp: i64, body: &str) -> String {
        let mac = hmac_sha256(&self.0, format!("{id}.{timestamp}.{body}").as_bytes());
        format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac))
    }
}

/// HMAC (RFC 2104) over SHA-256.
fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |x: u8| k.map(|b| b ^ x);
    let mut inner = Sha256::new();
    inner.update(pad(0x36));
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(pad(0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// The wait before retry number `attempt` (0 = after the first failure):
/// full jitter, `unit` (in [0, 1)) times min(cap, base * 2^attempt), at
/// least 50 ms.
pub fn backoff(attempt: u32, unit: f64, base: Duration, cap: Duration) -> Duration {
    let ceiling = base.saturating_mul(1u32 << attempt.min(30)).min(cap);
    ceiling.mul_f64(unit.clamp(0.0, 1.0)).max(Duration::from_millis(50))
}

/// One try to deliver an event to one endpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// When it started, unix milliseconds.
    pub at_ms: i64,
    pub endpoint: String,
    /// The HTTP status, when one came back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Why it failed without a status (connect, timeout, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub duration_ms: u64,
}

/// An outbox entry, `<event id>.json`: the event, where it goes and what
/// was tried.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// `data.id`: the job, response or batch.
    pub subject: String,
    /// The exact body sent on every attempt.
    pub body: String,
    pub endpoints: Vec<String>,
    /// Endpoints not yet answered with a 2xx.
    pub pending: Vec<String>,
    /// Unix milliseconds.
    pub created_ms: i64,
    /// Retries stop (the entry goes to dead/) after this, unix ms.
    pub retry_until_ms: i64,
    /// The next try, unix ms.
    pub next_attempt_ms: i64,
    #[serde(default)]
    pub attempts: Vec<Attempt>,
}

impl Entry {
    pub fn new(d: &Derived, endpoints: Vec<String>, now_ms: i64, retry_for: Duration) -> Entry {
        let id = d.id();
        Entry {
            body: event_body(&id, d.kind, now_ms / 1000, &d.subject),
            id,
            kind: d.kind.as_str().to_owned(),
            subject: d.subject.clone(),
            pending: endpoints.clone(),
            endpoints,
            created_ms: now_ms,
            retry_until_ms: now_ms.saturating_add(retry_for.as_millis() as i64),
            next_attempt_ms: now_ms,
            attempts: Vec::new(),
        }
    }
}

/// The outbox directories of a workspace.
#[derive(Clone, Debug)]
pub struct Outbox {
    root: PathBuf,
    io: FileIo,
}

/// Where an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shelf {
    /// Waiting to be delivered (`outbox/`).
    Outbox,
    /// Delivered to every endpoint (`sent/`).
    Sent,
    /// Out of retries (`dead/`).
    Dead,
}

impl Shelf {
    pub fn dir(self) -> &'static str {
        match self {
            Shelf::Outbox => "outbox",
            Shelf::Sent => "sent",
            Shelf::Dead => "dead",
        }
    }
}

/// `{"endpoints": [...]}`: the workspace's endpoints.
#[derive(Debug, Default, Serialize, Deserialize)]
struct EndpointsFile {
    endpoints: Vec<String>,
}

impl Outbox {
    /// The outbox of the workspace at `ws_root`, its directories created.
    pub fn open(ws_root: &Path, io: FileIo) -> io::Result<Outbox> {
        let root = ws_root.join(DIR);
        for s in [Shelf::Outbox, Shelf::Sent, Shelf::Dead] {
            std::fs::create_dir_all(root.join(s.dir()))?;
        }
        Ok(Outbox { root, io })
    }

    pub fn dir(&self, s: Shelf) -> PathBuf {
        self.root.join(s.dir())
    }

    /// The lock file whose holder delivers.
    pub fn lock_path(&self) -> PathBuf {
        self.root.join("deliver.lock")
    }

    /// Where an entry of this id is (outbox first: entries only move on).
    pub fn find(&self, id: &str) -> Option<Shelf> {
        [Shelf::Outbox, Shelf::Sent, Shelf::Dead]
            .into_iter()
            .find(|s| std::fs::symlink_metadata(self.dir(*s).join(format!("{id}.json"))).is_ok())
    }

    /// Writes a new entry into outbox/, unless an entry of its id exists
    /// anywhere; `Ok(false)` then. Complete or absent: written aside, then
    /// renamed in without replacing.
    pub fn create(&self, e: &Entry) -> io::Result<bool> {
        if self.find(&e.id).is_some() {
            return Ok(false);
        }
        let dir = self.dir(Shelf::Outbox);
        let tmp = format!(".{}.{}.new", e.id, std::process::id());
        self.io.write_atomic(&dir, &tmp, &to_bytes(e))?;
        let placed = rename_noreplace(&dir.join(&tmp), &dir.join(format!("{}.json", e.id)));
        let _ = std::fs::remove_file(dir.join(&tmp));
        match placed {
            Ok(()) => {
                self.io.sync_dir(&dir)?;
                Ok(true)
            }
            Err(err) if err.raw_os_error() == Some(libc::EEXIST) => Ok(false),
            Err(err) => Err(err),
        }
    }

    /// Rewrites an entry in outbox/ (the deliverer, holding the lock).
    pub fn update(&self, e: &Entry) -> io::Result<()> {
        self.io
            .write_atomic(&self.dir(Shelf::Outbox), &format!("{}.json", e.id), &to_bytes(e))
    }

    /// Moves an entry from outbox/ to `to` (after its last update).
    pub fn shelve(&self, id: &str, to: Shelf) -> io::Result<()> {
        let name = format!("{id}.json");
        std::fs::rename(self.dir(Shelf::Outbox).join(&name), self.dir(to).join(&name))?;
        self.io.sync_dir(&self.dir(to))?;
        self.io.sync_dir(&self.dir(Shelf::Outbox))
    }

    /// Reads an entry; `Ok(None)` when it is not (or no longer) there.
    pub fn read(&self, s: Shelf, id: &str) -> io::Result<Option<Entry>> {
        let p = self.dir(s).join(format!("{id}.json"));
        let Some(b) = read_optional(&p, MAX_ENTRY_BYTES)? else {
            return Ok(None);
        };
        serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| io::Error::other(format!("{}: not an outbox entry: {e}", p.display())))
    }

    /// The ids of the entries on a shelf.
    pub fn list(&self, s: Shelf) -> io::Result<Vec<String>> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(self.dir(s))? {
            let name = e?.file_name();
            let name = name.to_string_lossy();
            if let Some(id) = name.strip_suffix(".json").filter(|i| i.starts_with("evt_")) {
                v.push(id.to_owned());
            }
        }
        v.sort();
        Ok(v)
    }

    /// Removes the entries of a finished shelf (`sent/` or `dead/`) that
    /// are done with: their retry period is over and their last attempt
    /// (their creation, without one) is older than `keep`. After the retry
    /// period no process derives the event again (a job or batch that
    /// ended longer ago than that gets none), so a removed entry is never
    /// sent twice. Entries that cannot be read are left for a person to
    /// look at. Returns how many were removed.
    pub fn prune(&self, s: Shelf, now_ms: i64, keep: Duration) -> io::Result<usize> {
        debug_assert!(s != Shelf::Outbox, "outbox/ entries are still being delivered");
        let keep_ms = keep.as_millis().min(i64::MAX as u128) as i64;
        let mut removed = 0;
        for id in self.list(s)? {
            let Ok(Some(e)) = self.read(s, &id) else { continue };
            let last = e.attempts.iter().map(|a| a.at_ms).max().unwrap_or(e.created_ms);
            if now_ms < e.retry_until_ms.max(last.saturating_add(keep_ms)) {
                continue;
            }
            match std::fs::remove_file(self.dir(s).join(format!("{id}.json"))) {
                Ok(()) => removed += 1,
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        }
        if removed > 0 {
            self.io.sync_dir(&self.dir(s))?;
        }
        Ok(removed)
    }

    /// The workspace's endpoints (`endpoints.json`; none when missing).
    pub fn endpoints(&self) -> Vec<String> {
        read_optional(&self.root.join("endpoints.json"), 1 << 20)
            .ok()
            .flatten()
            .and_then(|b| serde_json::from_slice::<EndpointsFile>(&b).ok())
            .map(|f| f.endpoints)
            .unwrap_or_default()
    }

    /// Records the workspace's endpoints (a gateway or daemon started with
    /// `--webhook`; the last one started wins).
    pub fn set_endpoints(&self, endpoints: &[String]) -> io::Result<()> {
        let f = EndpointsFile {
            endpoints: endpoints.to_vec(),
        };
        let mut b = serde_json::to_vec_pretty(&f).unwrap_or_default();
        b.push(b'\n');
        self.io.write_atomic(&self.root, "endpoints.json", &b)?;
        self.io.sync_dir(&self.root)
    }

    /// Makes the entry of a derived event unless it exists: the endpoints
    /// resolved now (the job's URL, or the workspace's). `Ok(None)` when
    /// it exists already or has nowhere to go.
    pub fn derive(&self, d: &Derived, now_ms: i64, retry_for: Duration) -> io::Result<Option<Entry>> {
        let endpoints = match &d.target {
            Target::Url(u) => vec![u.clone()],
            Target::Workspace => self.endpoints(),
        };
        if endpoints.is_empty() || self.find(&d.id()).is_some() {
            return Ok(None);
        }
        let e = Entry::new(d, endpoints, now_ms, retry_for);
        Ok(self.create(&e)?.then_some(e))
    }
}

fn to_bytes(e: &Entry) -> Vec<u8> {
    let mut b = serde_json::to_vec_pretty(e).unwrap_or_default();
    b.push(b'\n');
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        // A key longer than the block is hashed first (RFC 4231 case 6).
        let mac = hmac_sha256(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
    }

    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        // The example of the Standard Webhooks spec (and its libraries' tests).
        let s = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(
            s.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_need_the_prefix_and_base64() {
        assert!(Secret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap_err()
            .contains("whsec_"));
        assert!(Secret::parse("whsec_not base64!").unwrap_err().contains("base64"));
        assert!(Secret::parse("whsec_YWJj").unwrap_err().contains("16 bytes"));
        assert!(format!("{:?}", Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap()).ends_with("(..)"));
    }

    #[test]
    fn event_ids_are_deterministic_and_distinct() {
        let a = event_id(EventType::JobDone, "x");
        assert_eq!(a, event_id(EventType::JobDone, "x"));
        assert_ne!(a, event_id(EventType::JobFailed, "x"));
        assert_ne!(a, event_id(EventType::JobDone, "y"));
        assert!(a.starts_with("evt_") && a.len() == 36, "{a}");
    }

    #[test]
    fn backoff_is_full_jitter_under_a_growing_cap() {
        let (b, c) = (Duration::from_secs(1), Duration::from_secs(300));
        assert_eq!(backoff(0, 0.999_999, b, c).as_millis(), 999);
        assert_eq!(backoff(3, 0.5, b, c), Duration::from_secs(4));
        assert_eq!(backoff(20, 0.5, b, c), Duration::from_secs(150));
        assert_eq!(backoff(100, 1.0, b, c), c);
        assert_eq!(backoff(5, 0.0, b, c), Duration::from_millis(50));
    }

    fn meta(extras: &[(&str, Value)]) -> Meta {
        let mut m = Meta::new();
        for (k, v) in extras {
            m.set_extra(k, v.clone());
        }
        m
    }

    #[test]
    fn finished_jobs_derive_their_events() {
        let id = JobId::parse("1764164852123456_1_000001").unwrap();
        let resp = [(BACKGROUND_KEY, Value::Bool(true)), (RESPONSE_ID_KEY, "resp_x".into())];
        let kinds = |st: State, extra: &[(&str, Value)]| {
            let mut all = resp.to_vec();
            all.extend_from_slice(extra);
            job_events(&id, st, &meta(&all))
                .into_iter()
                .map(|d| d.kind)
                .collect::<Vec<_>>()
        };
        assert_eq!(kinds(State::Done, &[]), [EventType::ResponseCompleted]);
        assert_eq!(
            kinds(State::Done, &[("finish_reason", "length".into())]),
            [EventType::ResponseIncomplete]
        );
        assert_eq!(kinds(State::Failed, &[]), [EventType::ResponseFailed]);
        assert_eq!(
            kinds(State::Failed, &[("cancelled", true.into())]),
            [EventType::ResponseCancelled]
        );
        assert!(kinds(State::Processing, &[]).is_empty());
        // Not background: no response event.
        assert!(job_events(&id, State::Done, &meta(&[(RESPONSE_ID_KEY, "resp_x".into())])).is_empty());
        let d = job_events(&id, State::Failed, &meta(&[(NOTIFY_KEY, "http://h/x".into())]));
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].kind, EventType::JobFailed);
        assert_eq!(d[0].subject, id.as_str());
        assert_eq!(d[0].target, Target::Url("http://h/x".into()));
        let d = job_events(&id, State::Done, &meta(&[(NOTIFY_KEY, true.into())]));
        assert_eq!(d[0].target, Target::Workspace);
        assert!(job_events(&id, State::Done, &meta(&[(NOTIFY_KEY, false.into())])).is_empty());
    }

    #[test]
    fn urls_are_checked() {
        for ok in ["http://127.0.0.1:9/hook", "http://example.com", "http://[::1]:80/x?y=1"] {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "https://x/",
            "ftp://x",
            "http://",
            "http:///x",
            "http://a b/",
            "http://h:99999/",
            "http://u@h/",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_event_is_recorded_once_wherever_it_is() {
        let d = tempfile::tempdir().unwrap();
        let ob = Outbox::open(d.path(), FileIo::new(false)).unwrap();
        let ev = Derived {
            kind: EventType::JobDone,
            subject: "j".into(),
            target: Target::Workspace,
        };
        let day = Duration::from_secs(86400);
        // No workspace endpoints: nowhere to go, nothing recorded.
        assert!(ob.derive(&ev, 1000, day).unwrap().is_none());
        ob.set_endpoints(&["http://h/a".into()]).unwrap();
        let e = ob.derive(&ev, 1000, day).unwrap().unwrap();
        assert_eq!(e.pending, ["http://h/a"]);
        assert_eq!(e.retry_until_ms, 1000 + 86_400_000);
        let body: Value = serde_json::from_str(&e.body).unwrap();
        assert_eq!(body["type"], "job.done");
        assert_eq!(body["data"]["id"], "j");
        assert_eq!(body["id"], e.id.as_str());
        assert!(ob.derive(&ev, 2000, day).unwrap().is_none());
        assert_eq!(ob.read(Shelf::Outbox, &e.id).unwrap().unwrap(), e);
        ob.shelve(&e.id, Shelf::Sent).unwrap();
        assert!(ob.derive(&ev, 3000, day).unwrap().is_none());
        assert!(!ob.create(&e).unwrap());
        assert_eq!(ob.list(Shelf::Sent).unwrap(), std::slice::from_ref(&e.id));
        assert!(ob.list(Shelf::Outbox).unwrap().is_empty());
    }

    #[test]
    fn finished_entries_are_pruned_after_their_retry_period_and_the_keep_time() {
        let d = tempfile::tempdir().unwrap();
        let ob = Outbox::open(d.path(), FileIo::new(false)).unwrap();
        ob.set_endpoints(&["http://h/a".into()]).unwrap();
        let hour = Duration::from_secs(3600);
        let h = 3_600_000i64;
        // Made at 0 with a retry period of one hour; `tried` is the time of
        // its last attempt (none when None).
        let entry = |subject: &str, to: Shelf, tried: Option<i64>| {
            let ev = Derived {
                kind: EventType::JobDone,
                subject: subject.into(),
                target: Target::Workspace,
            };
            let mut e = ob.derive(&ev, 0, hour).unwrap().unwrap();
            if let Some(at_ms) = tried {
                e.attempts.push(Attempt {
                    at_ms,
                    endpoint: "http://h/a".into(),
                    status: Some(200),
                    error: None,
                    duration_ms: 3,
                });
            }
            ob.update(&e).unwrap();
            ob.shelve(&e.id, to).unwrap();
            e.id
        };
        let early = entry("early", Shelf::Sent, Some(1000));
        let late = entry("late", Shelf::Sent, Some(5 * h));
        let dead = entry("dead", Shelf::Dead, Some(h));
        let untried = entry("untried", Shelf::Sent, None);
        // A corrupt entry stays for a person to look at.
        std::fs::write(ob.dir(Shelf::Sent).join("evt_broken.json"), b"{").unwrap();
        let keep = 2 * hour;

        // Within the retry period nothing goes, however short `keep` is.
        assert_eq!(ob.prune(Shelf::Sent, h - 1, Duration::ZERO).unwrap(), 0);
        // At 3 h: the retry period (1 h) is over; `early` and `untried` are
        // past keep, `late` (tried at 5 h) is not.
        assert_eq!(ob.prune(Shelf::Sent, 3 * h, keep).unwrap(), 2);
        let mut left = ob.list(Shelf::Sent).unwrap();
        left.sort();
        let mut want = vec![late.clone(), "evt_broken".to_owned()];
        want.sort();
        assert_eq!(left, want);
        assert!(ob.find(&early).is_none() && ob.find(&untried).is_none());
        // dead/ is pruned the same way, on its own.
        assert_eq!(ob.prune(Shelf::Dead, 3 * h - 1, keep).unwrap(), 0);
        assert_eq!(ob.prune(Shelf::Dead, 3 * h, keep).unwrap(), 1);
        assert!(ob.find(&dead).is_none());
        assert_eq!(ob.prune(Shelf::Sent, 7 * h, keep).unwrap(), 1);
        assert_eq!(ob.list(Shelf::Sent).unwrap(), ["evt_broken"]);
    }
}
