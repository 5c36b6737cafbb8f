//! The gateway's Prometheus metrics (`GET /metrics`): HTTP requests by route
//! template and status with their durations, and the workspace's jobs by
//! state. Job counts come from [`nrvna_core::tally::Tally`] (inotify on the
//! state directories, one listing at start): a scrape never walks the
//! workspace, however many jobs it holds.
//!
//! Wiring (in `router`): a `/metrics` route answered by [`exposition`], and
//! the [`track`] middleware layered outside the key check, so that refused
//! requests count too.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use nrvna_core::tally::Tally;
use nrvna_core::Workspace;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// The route label of a request no route matched (never its raw path).
pub const UNMATCHED: &str = "unmatched";

/// (route, method, status)
type RequestLabels = [(&'static str, String); 3];
/// (route, method)
type RouteLabels = [(&'static str, String); 2];
type Durations = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// The gateway's registry and the metrics its middleware feeds.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Durations,
}

/// The workspace's job counts, read when scraped.
struct Jobs(Tally);

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Jobs")
    }
}

impl Collector for Jobs {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let mut m = e.encode_descriptor(
            "nrvna_jobs",
            "Jobs in the workspace by state (what flw WS --json counts).",
            None,
            MetricType::Gauge,
        )?;
        for (state, n) in self.0.named_counts() {
            ConstGauge::new(n as i64).encode(m.encode_family(&[("state", state)])?)?;
        }
        Ok(())
    }
}

fn duration_histogram() -> Histogram {
    // 1 ms to about 33 minutes (a long completion waits for its job).
    Histogram::new(exponential_buckets(0.001, 2.0, 22))
}

impl Metrics {
    /// The registry, with the job counts of `ws` kept by a tally (its
    /// thread watches the state directories until the Metrics is dropped).
    pub fn new(ws: &Workspace) -> std::io::Result<Arc<Metrics>> {
        let tally = Tally::start(ws)?;
        let requests = Family::<RequestLabels, Counter>::default();
        let durations: Durations = Family::new_with_constructor(duration_histogram);
        let mut registry = Registry::default();
        registry.register(
            "nrvna_api_requests",
            "HTTP requests by route template, method and status.",
            requests.clone(),
        );
        registry.register(
            "nrvna_api_request_duration_seconds",
            "Seconds from a request's arrival to its response head (a stream's body may go on after).",
            durations.clone(),
        );
        registry.register_collector(Box::new(Jobs(tally)));
        Ok(Arc::new(Metrics {
            registry,
            requests,
            durations,
        }))
    }

    /// The text exposition (Prometheus 0.0.4).
    pub fn render(&self) -> String {
        let mut s = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut s, &self.registry);
        s
    }

    /// Records one answered request.
    pub fn record(&self, route: &str, method: &str, status: StatusCode, secs: f64) {
        let (route, method) = (route.to_owned(), method.to_ascii_lowercase());
        self.requests
            .get_or_create(&[
                ("route", route.clone()),
                ("method", method.clone()),
                ("status", status.as_u16().to_string()),
            ])
            .inc();
        self.durations
            .get_or_create(&[("route", route), ("method", method)])
            .observe(secs);
    }
}

/// The route template a request matched (`/v1/batches/{id}`), `/mcp` for
/// anything under the MCP service, or [`UNMATCHED`]: never the raw path,
/// so that ids cannot blow up the number of series.
pub fn route_of(req: &Request) -> String {
    match req.extensions().get::<MatchedPath>().map(MatchedPath::as_str) {
        Some(p) if p == "/mcp" || p.starts_with("/mcp/") => "/mcp".to_owned(),
        Some(p) => p.to_owned(),
        None => UNMATCHED.to_owned(),
    }
}

/// The middleware: counts every request by route, method and status, and
/// times it. Layer it with `middleware::from_fn_with_state(metrics, track)`.
pub async fn track(State(m): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let t0 = Instant::now();
    let route = route_of(&req);
    let method = req.method().as_str().to_owned();
    let res = next.run(req).await;
    m.record(&route, &method, res.status(), t0.elapsed().as_secs_f64());
    res
}

/// `GET /metrics`: the exposition, as Prometheus asks for it.
pub async fn exposition(m: Arc<Metrics>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        m.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_template_method_and_status() {
        let d = tempfile::tempdir().unwrap();
        let ws = Workspace::create(d.path()).unwrap();
        std::fs::create_dir(ws.dir(nrvna_core::State::Done).join("12")).unwrap();
        let m = Metrics::new(&ws).unwrap();
        m.record("/v1/batches/{id}", "GET", StatusCode::OK, 0.002);
        m.record("/v1/batches/{id}", "GET", StatusCode::OK, 0.003);
        m.record(UNMATCHED, "POST", StatusCode::NOT_FOUND, 0.0001);
        let text = m.render();
        for want in [
            "nrvna_api_requests_total{route=\"/v1/batches/{id}\",method=\"get\",status=\"200\"} 2\n",
            "nrvna_api_requests_total{route=\"unmatched\",method=\"post\",status=\"404\"} 1\n",
            "nrvna_api_request_duration_seconds_count{route=\"/v1/batches/{id}\",method=\"get\"} 2\n",
            "nrvna_jobs{state=\"done\"} 1\n",
            "nrvna_jobs{state=\"queued\"} 0\n",
        ] {
            assert!(text.contains(want), "{want} in:\n{text}");
        }
    }
}
