//! Webhook delivery for nrvna: one thread that, while it holds the
//! workspace's `deliver.lock`, derives events from finished jobs into the
//! outbox (`nrvna_core::webhook`) and posts every due entry, signed, until
//! each endpoint answers 2xx (then `sent/`) or its retry period ends (then
//! `dead/`). Used by both `nrvna-api` and `nrvnad`; blocking, no runtime.

pub mod cli;
mod http;

use std::collections::{HashMap, HashSet};
use std::io;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nrvna_core::fsio::{lock_file, read_optional};
use nrvna_core::meta::MAX_META_BYTES;
use nrvna_core::wait::DirWaker;
use nrvna_core::webhook::{backoff, check_url, job_events, Attempt, Entry, Outbox, Secret, Shelf, Target};
use nrvna_core::{JobId, Meta, State, Workspace};

/// How a process delivers.
#[derive(Clone, Debug)]
pub struct Config {
    /// Its `--webhook` endpoints: recorded as the workspace's when not empty.
    pub endpoints: Vec<String>,
    pub secret: Secret,
    /// How long an event is retried before it goes to dead/.
    pub retry_for: Duration,
    /// The first retry waits up to `backoff_base`, each later one up to
    /// twice as long, at most `backoff_max` (full jitter).
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Per request: connecting, sending and reading the status line.
    pub timeout: Duration,
    /// How long delivered (`sent/`) and given-up (`dead/`) entries stay
    /// after their last attempt (never before their retry period ends).
    pub keep: Duration,
}

/// How often the deliverer prunes `sent/` and `dead/`.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

impl Config {
    /// Defaults but the endpoints and the secret: 72 h of retries (like
    /// OpenAI), backoff from 1 s up to 5 min, 10 s per request, finished
    /// entries kept 7 days.
    pub fn new(endpoints: Vec<String>, secret: Secret) -> Config {
        Config {
            endpoints,
            secret,
            retry_for: Duration::from_secs(72 * 3600),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            timeout: Duration::from_secs(10),
            keep: Duration::from_secs(7 * 86_400),
        }
    }
}

/// Records the process's endpoints as the workspace's (when it has any)
/// and starts the delivery thread; it waits for `deliver.lock` (another
/// process may be delivering) and delivers while this process lives.
pub fn start(ws: &Workspace, cfg: Config) -> io::Result<()> {
    let outbox = Outbox::open(ws.root(), ws.io().clone())?;
    if !cfg.endpoints.is_empty() {
        outbox.set_endpoints(&cfg.endpoints)?;
    }
    let ws = ws.clone();
    std::thread::Builder::new().name("webhooks".into()).spawn(move || {
        let lock = match lock_file(&outbox.lock_path(), true) {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(
                    "webhooks: locking {}: {e}; no webhooks are delivered by this process",
                    outbox.lock_path().display()
                );
                return;
            }
        };
        tracing::info!("webhooks: delivering from {}", outbox.dir(Shelf::Outbox).display());
        Deliverer::new(ws, outbox, cfg).run();
        drop(lock);
    })?;
    Ok(())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The lock holder's state.
struct Deliverer {
    ws: Workspace,
    outbox: Outbox,
    cfg: Config,
    /// Finished jobs already looked at (pruned to those still listed).
    seen: HashSet<JobId>,
    /// Entries in outbox/, by id.
    due: HashMap<String, Entry>,
    /// xorshift state for the jitter.
    rng: u64,
    /// When `sent/` and `dead/` were last pruned.
    pruned: Option<Instant>,
}

impl Deliverer {
    fn new(ws: Workspace, outbox: Outbox, cfg: Config) -> Deliverer {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            ^ (u64::from(std::process::id()) << 32);
        Deliverer {
            ws,
            outbox,
            cfg,
            seen: HashSet::new(),
            due: HashMap::new(),
            rng: seed | 1,
            pruned: None,
        }
    }

    /// A number in [0, 1).
    fn unit(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    fn run(mut self) {
        let dirs = [
            self.ws.dir(State::Done),
            self.ws.dir(State::Failed),
            self.outbox.dir(Shelf::Outbox),
        ];
        let refs: Vec<&std::path::Path> = dirs.iter().map(|p| p.as_path()).collect();
        // inotify wakes it; the poll is only a safety net (and the pace
        // on filesystems without events).
        let waker = DirWaker::new(&refs, Duration::from_secs(30));
        loop {
            if self.pruned.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
                self.prune();
                self.pruned = Some(Instant::now());
            }
            self.derive();
            self.load();
            let next = self.deliver_due();
            let deadline = next.map(|ms| Instant::now() + Duration::from_millis((ms - now_ms()).max(0) as u64));
            waker.wait(deadline);
        }
    }

    /// Removes the delivered and given-up entries that are done with
    /// ([`Outbox::prune`]): without it `sent/` gains a file per event for
    /// as long as the workspace lives.
    fn prune(&mut self) {
        let now = now_ms();
        for shelf in [Shelf::Sent, Shelf::Dead] {
            match self.outbox.prune(shelf, now, self.cfg.keep) {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    "webhooks: removed {n} entries from {} (finished over {} ago)",
                    self.outbox.dir(shelf).display(),
                    nrvna_core::retention::format_duration(self.cfg.keep)
                ),
                Err(e) => tracing::warn!("webhooks: pruning {}: {e}", self.outbox.dir(shelf).display()),
            }
        }
    }

    /// Makes the entries of newly finished jobs. The first round reads the
    /// meta.json of every finished job (one read each); later rounds only
    /// those not seen before.
    fn derive(&mut self) {
        let mut listed = HashSet::new();
        for st in [State::Done, State::Failed] {
            let ids = match self.ws.list(st) {
                Ok(ids) => ids,
                Err(e) => {
                    tracing::warn!("webhooks: listing {}/: {e}", st.dir());
                    continue;
                }
            };
            for id in ids {
                listed.insert(id.clone());
                if self.seen.contains(&id) {
                    continue;
                }
                let p = self.ws.job_dir(st, &id).join("meta.json");
                let meta = match read_optional(&p, MAX_META_BYTES) {
                    Ok(Some(b)) => Meta::parse(&b).ok(),
                    _ => None,
                };
                // Ended before any retry period now running: no event.
                // Without `completed_at` (a job moved by hand), meta.json's
                // last change stands in: an event must not be derived again
                // after its entry was pruned.
                let ended_ms = meta
                    .as_ref()
                    .and_then(|m| m.completed_at.as_deref())
                    .and_then(nrvna_core::time::parse_iso8601_micros)
                    .map(|us| us / 1000)
                    .or_else(|| {
                        let t = std::fs::metadata(&p).and_then(|m| m.modified()).ok()?;
                        Some(t.duration_since(UNIX_EPOCH).ok()?.as_millis() as i64)
                    });
                let old = ended_ms.is_some_and(|t| t.saturating_add(self.cfg.retry_for.as_millis() as i64) < now_ms());
                if let Some(meta) = meta.filter(|_| !old) {
                    for d in job_events(&id, st, &meta) {
                        if let Target::Url(u) = &d.target {
                            if let Err(e) = check_url(u) {
                                tracing::warn!("webhooks: job {id} asks to notify {e}; no event sent");
                                continue;
                            }
                        }
                        match self.outbox.derive(&d, now_ms(), self.cfg.retry_for) {
                            Ok(Some(e)) => {
                                self.due.insert(e.id.clone(), e);
                            }
                            Ok(None) => {}
                            Err(e) => tracing::warn!("webhooks: recording the {} event of job {id}: {e}", d.kind),
                        }
                    }
                }
                self.seen.insert(id);
            }
        }
        self.seen.retain(|id| listed.contains(id));
    }

    /// Loads the entries other processes put into outbox/ (the gateway's
    /// batch events, or a previous deliverer's).
    fn load(&mut self) {
        let ids = match self.outbox.list(Shelf::Outbox) {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!("webhooks: listing the outbox: {e}");
                return;
            }
        };
        for id in ids {
            if self.due.contains_key(&id) {
                continue;
            }
            match self.outbox.read(Shelf::Outbox, &id) {
                Ok(Some(e)) => {
                    self.due.insert(id, e);
                }
                Ok(None) => {}
                Err(e) => tracing::warn!("webhooks: {e}; leaving it there"),
            }
        }
    }

    /// Tries every due entry; returns when the next one is due.
    fn deliver_due(&mut self) -> Option<i64> {
        let now = now_ms();
        let mut ready: Vec<String> = self
            .due
            .values()
            .filter(|e| e.next_attempt_ms <= now)
            .map(|e| e.id.clone())
            .collect();
        ready.sort_by_key(|id| self.due[id].next_attempt_ms);
        for id in ready {
            if let Some(e) = self.due.remove(&id) {
                if let Some(e) = self.attempt(e) {
                    self.due.insert(id, e);
                }
            }
        }
        self.due.values().map(|e| e.next_attempt_ms).min()
    }

    /// Posts one entry to its pending endpoints and records the tries;
    /// returns it while it still waits for a retry.
    fn attempt(&mut self, mut e: Entry) -> Option<Entry> {
        for url in e.pending.clone() {
            let started = now_ms();
            let ts = started / 1000;
            let sig = self.cfg.secret.sign(&e.id, ts, &e.body);
            let t = Instant::now();
            let res = http::post(&url, &e.id, ts, &sig, &e.body, self.cfg.timeout);
            let mut a = Attempt {
                at_ms: started,
                endpoint: url.clone(),
                status: None,
                error: None,
                duration_ms: t.elapsed().as_millis() as u64,
            };
            match res {
                Ok(code) => {
                    a.status = Some(code);
                    if (200..300).contains(&code) {
                        e.pending.retain(|p| p != &url);
                    } else {
                        tracing::debug!("webhooks: {} {} to {url}: HTTP {code}", e.kind, e.id);
                    }
                }
                Err(err) => {
                    tracing::debug!("webhooks: {} {} to {url}: {err}", e.kind, e.id);
                    a.error = Some(err);
                }
            }
            e.attempts.push(a);
        }
        let now = now_ms();
        let shelf = if e.pending.is_empty() {
            Some(Shelf::Sent)
        } else if now >= e.retry_until_ms {
            tracing::warn!(
                "webhooks: {} {} ({}) gave up after {} attempts; see {}",
                e.kind,
                e.id,
                e.subject,
                e.attempts.len(),
                self.outbox.dir(Shelf::Dead).display()
            );
            Some(Shelf::Dead)
        } else {
            let failures = e.attempts.len().saturating_sub(1).min(64) as u32;
            let wait = backoff(failures, self.unit(), self.cfg.backoff_base, self.cfg.backoff_max);
            e.next_attempt_ms = (now + wait.as_millis() as i64).min(e.retry_until_ms.max(now));
            None
        };
        let stored = self.outbox.update(&e).and_then(|()| match shelf {
            Some(s) => self.outbox.shelve(&e.id, s),
            None => Ok(()),
        });
        if let Err(err) = stored {
            tracing::warn!("webhooks: recording the attempts of {}: {err}", e.id);
        }
        shelf.is_none().then_some(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nrvna_core::webhook::{Derived, EventType};
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    fn cfg(endpoints: Vec<String>) -> Config {
        let mut c = Config::new(
            endpoints,
            Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap(),
        );
        c.backoff_base = Duration::from_millis(10);
        c.backoff_max = Duration::from_millis(20);
        c.timeout = Duration::from_secs(2);
        c
    }

    /// Answers `codes` in turn, returning each request's head lines.
    fn server(codes: Vec<u16>) -> (String, std::thread::JoinHandle<Vec<Vec<String>>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", l.local_addr().unwrap());
        let h = std::thread::spawn(move || {
            let mut heads = Vec::new();
            for code in codes {
                let (s, _) = l.accept().unwrap();
                let mut r = BufReader::new(s);
                let mut head = Vec::new();
                loop {
                    let mut line = String::new();
                    r.read_line(&mut line).unwrap();
                    if line.trim().is_empty() {
                        break;
                    }
                    head.push(line.trim().to_owned());
                }
                let mut s = r.into_inner();
                write!(s, "HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n").unwrap();
                heads.push(head);
            }
            heads
        });
        (url, h)
    }

    #[test]
    fn an_entry_is_retried_with_the_same_id_until_2xx_then_sent() {
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::create(d.path().join("ws")).unwrap();
        let (url, srv) = server(vec![500, 503, 204]);
        let c = cfg(vec![url.clone()]);
        let outbox = Outbox::open(ws.root(), ws.io().clone()).unwrap();
        outbox.set_endpoints(&c.endpoints).unwrap();
        let ev = Derived {
            kind: EventType::BatchCompleted,
            subject: "batch_x".into(),
            target: Target::Workspace,
        };
        let id = outbox.derive(&ev, now_ms(), c.retry_for).unwrap().unwrap().id;
        let mut dl = Deliverer::new(ws.clone(), outbox.clone(), c);
        let deadline = Instant::now() + Duration::from_secs(10);
        while outbox.find(&id) != Some(Shelf::Sent) && Instant::now() < deadline {
            dl.load();
            dl.deliver_due();
            std::thread::sleep(Duration::from_millis(5));
        }
        let e = outbox.read(Shelf::Sent, &id).unwrap().expect("delivered");
        let statuses: Vec<_> = e.attempts.iter().map(|a| a.status).collect();
        assert_eq!(statuses, [Some(500), Some(503), Some(204)]);
        for head in srv.join().unwrap() {
            assert!(head.contains(&format!("webhook-id: {id}")), "{head:?}");
            assert!(head.iter().any(|h| h.starts_with("webhook-signature: v1,")));
        }
    }

    #[test]
    fn a_pruned_entry_is_not_derived_again() {
        let d = tempfile::tempdir().unwrap();
        let (ws, outbox) = ws_with_endpoint(d.path());
        let mut c = cfg(vec![]);
        c.retry_for = Duration::from_millis(300);
        c.keep = Duration::ZERO;
        let mut meta = nrvna_core::Meta::new();
        meta.completed_at = Some(nrvna_core::time::iso8601_utc(SystemTime::now()));
        meta.set_extra("notify", true);
        let job = finished_job(&ws, State::Done, &[]);
        std::fs::write(ws.job_dir(State::Done, &job).join("meta.json"), meta.to_bytes()).unwrap();
        // The same job moved by hand, without completed_at.
        let bare = finished_job(&ws, State::Done, &[("notify", true.into())]);
        let mut dl = Deliverer::new(ws.clone(), outbox.clone(), c.clone());
        dl.derive();
        assert_eq!(dl.due.len(), 2);
        for (id, e) in dl.due.drain() {
            outbox.update(&e).unwrap();
            outbox.shelve(&id, Shelf::Sent).unwrap();
        }
        // Within the retry period the entries stay, whatever `keep` says.
        dl.prune();
        assert_eq!(outbox.list(Shelf::Sent).unwrap().len(), 2);
        std::thread::sleep(Duration::from_millis(400));
        dl.prune();
        assert!(outbox.list(Shelf::Sent).unwrap().is_empty());
        // A restarted deliverer finds both jobs ended before its retry
        // period: no second event, though their entries are gone.
        let mut again = Deliverer::new(ws.clone(), outbox.clone(), c);
        again.derive();
        assert!(again.due.is_empty(), "{:?}", again.due.keys());
        assert!(outbox.list(Shelf::Outbox).unwrap().is_empty());
        assert!(again.seen.contains(&job) && again.seen.contains(&bare));
    }

    /// A workspace under `dir` whose endpoint is http://127.0.0.1:9/ws.
    fn ws_with_endpoint(dir: &std::path::Path) -> (Workspace, Outbox) {
        let ws = Workspace::create(dir.join("ws")).unwrap();
        let outbox = Outbox::open(ws.root(), ws.io().clone()).unwrap();
        outbox.set_endpoints(&["http://127.0.0.1:9/ws".into()]).unwrap();
        (ws, outbox)
    }

    /// Publishes a job with meta extras and moves it to `st` as a daemon would.
    fn finished_job(ws: &Workspace, st: State, extras: &[(&str, serde_json::Value)]) -> JobId {
        let mut s = nrvna_core::Submission::text("hi");
        for (k, v) in extras {
            s.extra_meta.insert((*k).into(), v.clone());
        }
        let id = s.publish(ws).unwrap();
        ws.transition(&id, State::Ready, st).unwrap();
        id
    }

    #[test]
    fn finished_jobs_are_derived_once_also_by_a_restarted_deliverer() {
        let d = tempfile::tempdir().unwrap();
        let (ws, outbox) = ws_with_endpoint(d.path());
        let url = serde_json::Value::from("http://127.0.0.1:9/mine");
        let a = finished_job(&ws, State::Done, &[("notify", url)]);
        let b = finished_job(&ws, State::Failed, &[("notify", true.into())]);
        finished_job(&ws, State::Done, &[]);
        finished_job(&ws, State::Done, &[("notify", "ftp://x".into())]);
        // Ended longer ago than the retry period: no event.
        let mut old_meta = nrvna_core::Meta::new();
        old_meta.completed_at = Some("2020-01-01T00:00:00.000000Z".into());
        old_meta.set_extra("notify", true);
        let old = finished_job(&ws, State::Done, &[]);
        std::fs::write(ws.job_dir(State::Done, &old).join("meta.json"), old_meta.to_bytes()).unwrap();
        let mut dl = Deliverer::new(ws.clone(), outbox.clone(), cfg(vec![]));
        dl.derive();
        let mut got: Vec<(String, String, Vec<String>)> = dl
            .due
            .values()
            .map(|e| (e.kind.clone(), e.subject.clone(), e.endpoints.clone()))
            .collect();
        got.sort();
        let mut want = vec![
            (
                "job.done".to_owned(),
                a.to_string(),
                vec!["http://127.0.0.1:9/mine".to_owned()],
            ),
            (
                "job.failed".to_owned(),
                b.to_string(),
                vec!["http://127.0.0.1:9/ws".to_owned()],
            ),
        ];
        want.sort();
        assert_eq!(got, want);
        assert_eq!(outbox.list(Shelf::Outbox).unwrap().len(), 2);
        // A restart (after kill -9) derives again and finds the entries.
        let mut again = Deliverer::new(ws.clone(), outbox.clone(), cfg(vec![]));
        again.derive();
        assert!(again.due.is_empty());
        assert_eq!(outbox.list(Shelf::Outbox).unwrap().len(), 2);
    }

    #[test]
    fn an_entry_out_of_retries_goes_to_dead_with_every_attempt_recorded() {
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::create(d.path().join("ws")).unwrap();
        // Nothing listens here (bound, then closed).
        let url = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}/", l.local_addr().unwrap())
        };
        let mut c = cfg(vec![]);
        c.retry_for = Duration::from_millis(200);
        let outbox = Outbox::open(ws.root(), ws.io().clone()).unwrap();
        let ev = Derived {
            kind: EventType::JobDone,
            subject: "j".into(),
            target: Target::Url(url),
        };
        let id = outbox.derive(&ev, now_ms(), c.retry_for).unwrap().unwrap().id;
        let mut dl = Deliverer::new(ws, outbox.clone(), c);
        let deadline = Instant::now() + Duration::from_secs(10);
        while outbox.find(&id) != Some(Shelf::Dead) && Instant::now() < deadline {
            dl.load();
            dl.deliver_due();
            std::thread::sleep(Duration::from_millis(5));
        }
        let e = outbox.read(Shelf::Dead, &id).unwrap().expect("dead");
        assert!(e.attempts.len() >= 2, "{e:?}");
        assert!(e.attempts.iter().all(|a| a.status.is_none() && a.error.is_some()));
    }
}
