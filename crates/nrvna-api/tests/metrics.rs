//! The gateway's metrics module (issue #23), through a small router built
//! here with the module's middleware and handler as `router` wires them:
//! requests counted by route template (never the raw path) and status, and
//! the workspace's job counts, parsed with the official Python parser and
//! compared with `flw WS --json` during and after a real run on the real
//! model; a workspace of 100,000 jobs is scraped within 100 ms.
//! The gateway binary itself serves it at `/metrics`, behind the key
//! unless `--metrics-public`.

mod common;

use nrvna_api::metrics;
#[path = "../../nrvnad/tests/prom/mod.rs"]
mod prom;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::middleware;
use axum::routing::get;
use axum::Router;
use common::*;
use nrvna_core::Workspace;
use prom::parse;
use serde_json::Value;

/// Serves `m`'s `/metrics` and two routes shaped like the gateway's,
/// behind the module's middleware, on a free loopback port; returns the
/// base URL. The runtime lives on its own thread until the test ends.
fn serve(m: Arc<metrics::Metrics>) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().expect("a tokio runtime");
        rt.block_on(async move {
            let scrape = m.clone();
            let app = Router::new()
                .route("/v1/batches/{id}", get(|| async { "a batch" }))
                .route("/v1/models", get(|| async { "models" }))
                .route("/metrics", get(move || metrics::exposition(scrape.clone())))
                .layer(middleware::from_fn_with_state(m, metrics::track));
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binding");
            tx.send(format!("http://{}", l.local_addr().unwrap())).unwrap();
            axum::serve(l, app).await.expect("serving");
        });
    });
    rx.recv().expect("the server's address")
}

fn get_path(base: &str, path: &str) -> Reply {
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        authority(base)
    );
    raw(base, req.as_bytes(), Duration::from_secs(10)).unwrap_or_else(|| panic!("no answer to GET {path}"))
}

/// The tests' Python environment with `prometheus_client` (see common's
/// `python`, which also wants openai and mcp).
fn python_prom() -> PathBuf {
    let py = python();
    let ok = Command::new(&py)
        .args(["-c", "import prometheus_client"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{} cannot import prometheus_client: run scripts/pyenv.sh (it installs scripts/pyenv-requirements.txt)",
        py.display()
    );
    py
}

/// (queued, running, done, failed) from `flw WS --json`.
fn flw_counts(ws: &Path) -> [u64; 4] {
    let out = clean(&mut Command::new(tool("flw")))
        .arg(ws)
        .arg("--json")
        .output()
        .expect("running flw");
    let v: Value = serde_json::from_slice(&out.stdout).expect("flw --json");
    ["queued", "running", "done", "failed"].map(|k| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}")))
}

#[test]
fn requests_count_by_route_template_and_status_never_the_raw_path() {
    let py = python_prom();
    let d = tempfile::tempdir().unwrap();
    let ws = Workspace::create(d.path()).unwrap();
    let base = serve(metrics::Metrics::new(&ws).unwrap());
    for path in [
        "/v1/batches/batch_abc",
        "/v1/batches/batch_xyz",
        "/v1/models",
        "/nope/secret-123",
    ] {
        get_path(&base, path);
    }
    let r = get_path(&base, "/metrics");
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap_or_default()
        .starts_with("text/plain; version=0.0.4"));
    let text = r.text();
    for raw_path in ["batch_abc", "batch_xyz", "secret-123", "/nope"] {
        assert!(!text.contains(raw_path), "{raw_path} leaked into:\n{text}");
    }
    let s = parse(&py, &text);
    let count = |route: &str, status: &str| -> f64 {
        s.value(
            "nrvna_api_requests_total",
            &[("route", route), ("status", status), ("method", "get")],
        )
    };
    assert_eq!(count("/v1/batches/{id}", "200"), 2.0);
    assert_eq!(count("/v1/models", "200"), 1.0);
    assert_eq!(count(metrics::UNMATCHED, "404"), 1.0);
    assert_eq!(
        s.value(
            "nrvna_api_request_duration_seconds_count",
            &[("route", "/v1/batches/{id}")]
        ),
        2.0
    );
    assert_eq!(s.family_type("nrvna_api_request_duration_seconds"), "histogram");
    assert_eq!(s.family_type("nrvna_api_requests"), "counter");
    assert_eq!(s.family_type("nrvna_jobs"), "gauge");
    // The scrape before this one counted itself.
    let again = parse(&py, &get_path(&base, "/metrics").text());
    assert_eq!(
        again.value("nrvna_api_requests_total", &[("route", "/metrics"), ("status", "200")]),
        1.0
    );
}

#[test]
fn job_counts_match_flw_during_and_after_a_real_run() {
    let py = python_prom();
    let d = tempfile::tempdir().unwrap();
    let ws_path = d.path().join("ws");
    let ws = Workspace::create(&ws_path).unwrap();
    let base = serve(metrics::Metrics::new(&ws).unwrap());
    let _daemon = start_daemon(&ws_path, 2);
    let n = 6;
    for i in 0..n {
        let out = clean(&mut Command::new(tool("wrk")))
            .arg(&ws_path)
            .arg(format!("Name three animals. ({i})"))
            .output()
            .expect("running wrk");
        assert!(out.status.success(), "wrk: {}", String::from_utf8_lossy(&out.stderr));
    }
    // While the jobs move: every scrape parses and holds every job (a
    // rename's two events may land in two passes of the tally: a job in
    // flight may count 0 or 2 times for an instant, within the 2 workers).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let c = parse(&py, &get_path(&base, "/metrics").text()).jobs();
        let total: u64 = c.iter().sum();
        assert!((n - 2..=n + 2).contains(&total), "{c:?} while running");
        if c[2] + c[3] == n {
            break;
        }
        assert!(Instant::now() < deadline, "the jobs did not finish: {c:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Quiescent: the same counts as flw, at the same moment.
    let mut last = None;
    let same = wait_for(Duration::from_secs(10), || {
        let mine = parse(&py, &get_path(&base, "/metrics").text()).jobs();
        let flw = flw_counts(&ws_path);
        last = Some((mine, flw));
        mine == flw
    });
    assert!(same, "nrvna_jobs vs flw --json: {last:?}");
    assert_eq!(last.unwrap().0, [0, 0, n, 0]);
}

#[test]
fn a_workspace_of_100000_jobs_is_scraped_within_100_ms() {
    let py = python_prom();
    let d = tempfile::tempdir().unwrap();
    let ws = Workspace::create(d.path()).unwrap();
    let (done, queued) = (99_000u128, 1_000u128);
    let base_id = 17_000_000_000_000_000_000u128;
    for i in 0..done {
        std::fs::create_dir(
            ws.dir(nrvna_core::State::Done)
                .join(format!("{}_1_000001", base_id + i)),
        )
        .unwrap();
    }
    for i in 0..queued {
        std::fs::create_dir(
            ws.dir(nrvna_core::State::Ready)
                .join(format!("{}_2_000001", base_id + i)),
        )
        .unwrap();
    }
    let t0 = Instant::now();
    let m = metrics::Metrics::new(&ws).unwrap();
    println!(
        "gateway metrics: counted 100,000 jobs at start in {:.1} ms",
        t0.elapsed().as_secs_f64() * 1e3
    );
    let base = serve(m);
    let mut times = Vec::new();
    let mut text = String::new();
    for _ in 0..11 {
        let t = Instant::now();
        let r = get_path(&base, "/metrics");
        times.push(t.elapsed());
        assert_eq!(r.status, 200);
        text = r.text();
    }
    times.sort();
    let median = times[times.len() / 2];
    println!(
        "gateway scrape of a 100,000-job workspace: median {:.2} ms, min {:.2} ms, max {:.2} ms (11 scrapes)",
        median.as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[10].as_secs_f64() * 1e3
    );
    assert!(median < Duration::from_millis(100), "median scrape {median:?}");
    let c = parse(&py, &text).jobs();
    assert_eq!(c, [queued as u64, 0, done as u64, 0]);
    assert_eq!(c, flw_counts(d.path()));
}

#[test]
fn the_gateway_serves_metrics_behind_its_key_unless_public() {
    let py = python();
    let d = tempfile::tempdir().unwrap();
    let ws = d.path().join("ws");
    for public in [false, true] {
        let extra: &[&str] = if public { &["--metrics-public"] } else { &[] };
        let (_api, base) = start(api_command(&ws, extra));
        // A request the gateway answers, then one it refuses: both counted.
        assert_eq!(common::get(&base, "/v1/models").status, 200);
        let no_key = |path: &str| {
            raw(
                &base,
                &request(&base, "GET", path, None, &[], None),
                Duration::from_secs(30),
            )
            .unwrap()
        };
        assert_eq!(no_key("/v1/models").status, 401, "only /metrics can be public");
        let r = no_key("/metrics");
        assert_eq!(
            r.status,
            if public { 200 } else { 401 },
            "public: {public}: {}",
            r.text()
        );
        let r = common::get(&base, "/metrics");
        assert_eq!(r.status, 200);
        let s = parse(&py, &r.text());
        let count = |status: &str| {
            s.matching(
                "nrvna_api_requests_total",
                &[("route", "/v1/models"), ("status", status)],
            )
            .iter()
            .sum::<f64>()
        };
        assert_eq!((count("200"), count("401")), (1.0, 1.0), "{}", r.text());
        assert_eq!(s.jobs(), [0, 0, 0, 0]);
    }
}
