//! Prometheus metrics (`--metrics ADDR`): what the queue is doing, for the
//! monitoring people already run. The threads feed [`JobMetrics`] as jobs
//! finish; the figures that are state (job counts, the engine's batch and KV
//! cells, shared-workspace counters) are read when scraped, from handles the
//! daemon keeps anyway: a scrape never walks the workspace.
//!
//! A tiny HTTP responder thread (`Metrics`) answers `GET /metrics` in the
//! Prometheus text format (0.0.4); anything else is a 404.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use nrvna_core::tally::Tally;
use nrvna_engine::EngineStats;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::membership::Membership;
use crate::pool::Pool;

/// Why a job failed, as a small fixed set of label values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Cancelled by a user (`flw --cancel`, a client leaving).
    Cancelled,
    /// Its `timeout_s` passed.
    Timeout,
    /// The job itself is unusable: unreadable or invalid files, a bad
    /// grammar, a template that cannot render it.
    BadInput,
    /// The engine refused the job (llama.cpp rejected its input).
    Engine,
    /// Structured output that does not hold (not JSON, or not the schema).
    Schema,
    /// Recovered too often (`--max-recovery-attempts`).
    RecoveryCeiling,
    Other,
}

impl Reason {
    pub const ALL: [Reason; 7] = [
        Reason::Cancelled,
        Reason::Timeout,
        Reason::BadInput,
        Reason::Engine,
        Reason::Schema,
        Reason::RecoveryCeiling,
        Reason::Other,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Reason::Cancelled => "cancelled",
            Reason::Timeout => "timeout",
            Reason::BadInput => "bad_input",
            Reason::Engine => "engine",
            Reason::Schema => "schema",
            Reason::RecoveryCeiling => "recovery_ceiling",
            Reason::Other => "other",
        }
    }
}

/// One label: (name, value).
type Label = [(&'static str, &'static str); 1];

/// What the workers record as jobs end.
#[derive(Debug)]
pub struct JobMetrics {
    /// submitted_at (meta.json) to claimed.
    pub queue_wait: Histogram,
    /// Claimed to finished (done or failed).
    pub run_time: Histogram,
    pub generated_tokens: Counter,
    pub prompt_tokens: Counter,
    /// Jobs this daemon finished, by state (done, failed).
    pub finished: Family<Label, Counter>,
    /// Failed jobs by [`Reason`].
    pub failures: Family<Label, Counter>,
    /// Jobs returned to input/ready/ by this daemon's recovery (at start,
    /// after a worker panic); a member's lease recoveries are added when
    /// scraped.
    pub recovered: AtomicU64,
}

impl Default for JobMetrics {
    fn default() -> Self {
        let failures: Family<Label, Counter> = Family::default();
        let finished: Family<Label, Counter> = Family::default();
        // Every series exists from the start, at 0 (rate() needs a first sample).
        for r in Reason::ALL {
            let _ = failures.get_or_create(&[("reason", r.label())]);
        }
        for s in ["done", "failed"] {
            let _ = finished.get_or_create(&[("state", s)]);
        }
        JobMetrics {
            // 10 ms to about 5.8 days.
            queue_wait: Histogram::new(exponential_buckets(0.01, 4.0, 12)),
            // 10 ms to about 3 hours.
            run_time: Histogram::new(exponential_buckets(0.01, 3.0, 14)),
            generated_tokens: Counter::default(),
            prompt_tokens: Counter::default(),
            finished,
            failures,
            recovered: AtomicU64::new(0),
        }
    }
}

impl JobMetrics {
    /// A job that failed for `reason` (finished, or failed by recovery).
    pub fn failed(&self, reason: Reason) {
        self.failures.get_or_create(&[("reason", reason.label())]).inc();
    }
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    ConstGauge::new(v).encode(e.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    ConstCounter::new(v).encode(e.encode_descriptor(name, help, None, MetricType::Counter)?)
}

impl Collector for Sources {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        if let Some(t) = &self.tally {
            let mut m = e.encode_descriptor(
                "nrvna_jobs",
                "Jobs in the workspace by state (all submitters and daemons; what flw WS --json counts).",
                None,
                MetricType::Gauge,
            )?;
            for (state, n) in t.named_counts() {
                ConstGauge::new(n as i64).encode(m.encode_family(&[("state", state)])?)?;
            }
        }
        let mut m = e.encode_descriptor(
            "nrvna_daemon_jobs",
            "Jobs this daemon has queued (found by its Scanner, not yet claimed) or running, by priority and model.",
            None,
            MetricType::Gauge,
        )?;
        for (p, queued, running) in self.pool.by_priority() {
            let prio = p.as_str();
            for (state, n) in [("queued", queued), ("running", running)] {
                let labels = [("state", state), ("priority", prio), ("model", self.model.as_str())];
                ConstGauge::new(n as i64).encode(m.encode_family(&labels)?)?;
            }
        }
        let lease_recovered = self
            .membership
            .as_ref()
            .map_or(0, |m| m.recovered.load(Ordering::Relaxed));
        counter(
            &mut e,
            "nrvna_recoveries",
            "Jobs returned to input/ready/ by recovery (at start, after a worker panic, from expired members).",
            self.jobs.recovered.load(Ordering::Relaxed) + lease_recovered,
        )?;
        if let Some(m) = &self.membership {
            counter(
                &mut e,
                "nrvna_fenced_results",
                "Results discarded because another member took the job back after this member's lease expired.",
                m.fenced.load(Ordering::Relaxed),
            )?;
            counter(
                &mut e,
                "nrvna_lost_claim_races",
                "Claims that found the job already taken by another member or worker.",
                m.lost_races.load(Ordering::Relaxed),
            )?;
            gauge(
                &mut e,
                "nrvna_members_alive",
                "Members of the shared workspace alive at the last lease pass (this one included).",
                m.alive.load(Ordering::Relaxed) as i64,
            )?;
        }
        if let Some(s) = &self.engine {
            let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
            counter(
                &mut e,
                "nrvna_engine_decodes",
                "Decode calls of the batched engine.",
                r(&s.decodes),
            )?;
            counter(
                &mut e,
                "nrvna_engine_decode_sequences",
                "Sequences in the batched engine's decodes, summed (over nrvna_engine_decodes_total: the mean batch size).",
                r(&s.sequences),
            )?;
            counter(
                &mut e,
                "nrvna_engine_decode_tokens",
                "Tokens in the batched engine's decodes, summed.",
                r(&s.tokens),
            )?;
            gauge(
                &mut e,
                "nrvna_engine_decode_batch_sequences",
                "Sequences in the batched engine's last decode.",
                r(&s.last_sequences) as i64,
            )?;
            gauge(
                &mut e,
                "nrvna_engine_kv_cells_used",
                "KV cells in use after the last decode (running sequences and the prefix cache).",
                r(&s.kv_cells_used) as i64,
            )?;
            gauge(
                &mut e,
                "nrvna_engine_kv_cells",
                "KV cells of the batched engine's shared context.",
                r(&s.kv_cells) as i64,
            )?;
        }
        Ok(())
    }
}

/// What the metrics are read from when scraped: the handles the daemon
/// keeps anyway (job counts, the engine's figures, the member's counters).
pub struct Sources {
    pub tally: Option<Tally>,
    pub pool: Arc<Pool>,
    pub model: String,
    pub engine: Option<Arc<EngineStats>>,
    pub membership: Option<Arc<Membership>>,
    pub jobs: Arc<JobMetrics>,
}

/// The registry: every metric of the daemon.
pub fn registry(src: Sources) -> Registry {
    let mut r = Registry::default();
    let j = src.jobs.clone();
    let histograms = [
        (
            "nrvna_job_queue_wait_seconds",
            "Seconds from a job's submitted_at to its claim.",
            &j.queue_wait,
        ),
        (
            "nrvna_job_run_seconds",
            "Seconds from a job's claim to its finish (done or failed).",
            &j.run_time,
        ),
    ];
    for (name, help, h) in histograms {
        r.register(name, help, h.clone());
    }
    let counters = [
        (
            "nrvna_generated_tokens",
            "Tokens generated by finished jobs.",
            &j.generated_tokens,
        ),
        (
            "nrvna_prompt_tokens",
            "Prompt tokens processed by finished jobs.",
            &j.prompt_tokens,
        ),
    ];
    for (name, help, c) in counters {
        r.register(name, help, c.clone());
    }
    let families = [
        (
            "nrvna_jobs_finished",
            "Jobs this daemon finished, by state.",
            &j.finished,
        ),
        ("nrvna_job_failures", "Jobs that failed, by reason class.", &j.failures),
    ];
    for (name, help, f) in families {
        r.register(name, help, f.clone());
    }
    r.register_collector(Box::new(src));
    r
}

/// The text exposition of `r`.
pub fn render(r: &Registry) -> String {
    let mut s = String::with_capacity(8 * 1024);
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut s, r);
    s
}

/// The `Metrics` thread: answers `GET /metrics` until stopped.
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Server {
    /// Starts answering on `listener` (bound early, so that a taken
    /// address stops the daemon before it loads the model).
    pub fn start(listener: TcpListener, registry: Registry) -> io::Result<Server> {
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new().name("Metrics".into()).spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(c) = conn {
                    if let Err(e) = answer(c, &registry) {
                        tracing::debug!("metrics: a scrape ended early: {e}");
                    }
                }
            }
        })?;
        Ok(Server {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it listens on (the port chosen when ADDR asked for 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept with a connection of our own.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one request head (at most 8 KiB, 2 s) and answers it.
fn answer(mut c: TcpStream, registry: &Registry) -> io::Result<()> {
    c.set_read_timeout(Some(Duration::from_secs(2)))?;
    c.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = c.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > 8 * 1024 {
            return respond(
                &mut c,
                "431 Request Header Fields Too Large",
                "text/plain",
                b"request head too large\n",
            );
        }
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|b| *b == b' ');
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let path = target.split(|b| *b == b'?').next().unwrap_or_default();
    match (method, path) {
        (b"GET", b"/metrics") => respond(&mut c, "200 OK", CONTENT_TYPE, render(registry).as_bytes()),
        (b"HEAD", b"/metrics") => respond(&mut c, "200 OK", CONTENT_TYPE, b""),
        (_, b"/metrics") => respond(&mut c, "405 Method Not Allowed", "text/plain", b"use GET /metrics\n"),
        _ => respond(
            &mut c,
            "404 Not Found",
            "text/plain",
            b"not found: metrics are at GET /metrics\n",
        ),
    }
}

fn respond(c: &mut TcpStream, status: &str, ctype: &str, body: &[u8]) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes())?;
    c.write_all(body)?;
    c.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_and_state_series_exists_from_the_start_and_counters_end_in_total() {
        let jobs = Arc::new(JobMetrics::default());
        jobs.failed(Reason::Schema);
        jobs.prompt_tokens.inc_by(7);
        let r = registry(Sources {
            tally: None,
            pool: Arc::new(Pool::new()),
            model: "m".into(),
            engine: None,
            membership: None,
            jobs,
        });
        let text = render(&r);
        for reason in Reason::ALL {
            let want = if reason == Reason::Schema { 1 } else { 0 };
            assert!(
                text.contains(&format!(
                    "nrvna_job_failures_total{{reason=\"{}\"}} {want}\n",
                    reason.label()
                )),
                "{reason:?} in:\n{text}"
            );
        }
        assert!(text.contains("nrvna_prompt_tokens_total 7\n"), "{text}");
        assert!(text.contains("nrvna_jobs_finished_total{state=\"done\"} 0\n"), "{text}");
        assert!(
            text.contains("nrvna_daemon_jobs{state=\"queued\",priority=\"high\",model=\"m\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE nrvna_job_run_seconds histogram\n"), "{text}");
    }
}
