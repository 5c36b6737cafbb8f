//! `nrvnad --metrics ADDR` (issue #23): the Prometheus text exposition,
//! scraped during a real run on the real model and parsed with the
//! official Python parser (`prometheus_client.parser`); its job counts
//! match `flw WS --json` once the queue is quiescent, and a workspace of
//! 100,000 jobs is scraped within 100 ms (counts are kept, not listed).

mod common;
mod prom;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use common::*;
use prom::parse;
use serde_json::Value;

/// A free port on 127.0.0.1 (bound and released; the daemon binds it next).
fn free_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding a probe port");
    l.local_addr().expect("local addr").to_string()
}

/// `GET path` on `addr`: (status line, body).
fn get(addr: &str, path: &str) -> (String, String) {
    let mut c = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(c, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    c.read_to_string(&mut raw).expect("reading the response");
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {raw:?}"));
    (head.lines().next().unwrap_or_default().to_owned(), body.to_owned())
}

/// Waits until the daemon answers on `addr`.
fn wait_serving(d: &mut Daemon, addr: &str) {
    let ok = wait_for(STARTUP, || d.exited().is_none() && TcpStream::connect(addr).is_ok());
    assert!(ok, "nrvnad never answered on --metrics {addr}");
}

/// (queued, running, done, failed) from `flw WS --json`.
fn flw_counts(ws: &TestWs) -> [u64; 4] {
    let r = ws.flw(&["--json"], STARTUP);
    let v: Value = serde_json::from_str(r.stdout.trim()).unwrap_or_else(|e| panic!("flw --json: {e}: {}", r.stdout));
    ["queued", "running", "done", "failed"].map(|k| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}")))
}

fn py() -> PathBuf {
    test_pyenv("prometheus_client").join("bin/python")
}

#[test]
fn a_real_run_scraped_and_parsed_matches_flw_and_the_jobs_meta() {
    let py = py();
    let ws = TestWs::new();
    ws.create_dirs();
    let addr = free_addr();
    let mut d = ws.daemon(
        &["--metrics", &addr, "--workers", "2"],
        &[("NRVNA_PREDICT", "32"), ("NRVNA_LOG_LEVEL", "info")],
    );
    d.wait_ready();
    wait_serving(&mut d, &addr);

    // Before any job: every series is there, at zero.
    let s = parse(&py, &get(&addr, "/metrics").1);
    assert_eq!(s.jobs(), [0, 0, 0, 0]);
    assert_eq!(s.value("nrvna_job_failures_total", &[("reason", "bad_input")]), 0.0);

    let mut ids: Vec<String> = (0..5)
        .map(|i| ws.submit(&[], &format!("Name a colour, then a fruit. ({i})")))
        .collect();
    ids.push(ws.submit(&["--priority", "high"], "Count to five."));
    // A job naming a model this daemon does not serve: failed at once, as
    // bad input.
    let elsewhere = ws.submit(&["--model", "another-model"], "not for this daemon");
    // A job whose params.json is not JSON: failed as bad input.
    let meta = format!(
        "{{\"submitted_at\":\"{}\",\"mode\":\"text\"}}",
        nrvna_core::time::iso8601_utc(SystemTime::now())
    );
    ws.publish_job(
        "17000000000000000000_1_000001",
        &[
            ("prompt.txt", b"hi"),
            ("meta.json", meta.as_bytes()),
            ("params.json", b"{not json"),
        ],
    );

    // Scrapes while the jobs move: each parses, and no job is ever lost
    // from the counts (8 jobs; a rename's two events may land in two
    // passes of the tally, so a job in flight may count 0 or 2 times
    // for an instant: within the 2 workers' jobs).
    let mut during = 0;
    while ws.names_in(DONE).len() + ws.names_in(FAILED).len() < 8 {
        let sc = parse(&py, &get(&addr, "/metrics").1);
        let total: u64 = sc.jobs().iter().sum();
        assert!((6..=10).contains(&total), "{:?} while running", sc.jobs());
        during += 1;
        std::thread::sleep(Duration::from_millis(20));
        assert!(during < 10_000, "the jobs did not finish");
    }
    eprintln!("{during} scrapes while the jobs ran");

    // Quiescent: the counts are flw's, at the same moment.
    let mut last = None;
    let same = wait_for(Duration::from_secs(10), || {
        let sc = parse(&py, &get(&addr, "/metrics").1);
        let (mine, flw) = (sc.jobs(), flw_counts(&ws));
        last = Some((mine, flw));
        mine == flw
    });
    assert!(same, "nrvna_jobs vs flw --json: {last:?}");
    let s = parse(&py, &get(&addr, "/metrics").1);
    assert_eq!(s.jobs(), [0, 0, 6, 2], "queued, running, done, failed");
    assert!(
        ws.read(FAILED, &elsewhere, "error.txt")
            .contains("this daemon serves: SmolLM2"),
        "{}",
        ws.read(FAILED, &elsewhere, "error.txt")
    );
    assert_eq!(s.jobs(), flw_counts(&ws));

    // What the daemon counted matches the jobs' own meta.json.
    let (mut prompt, mut generated) = (0.0, 0.0);
    for id in &ids {
        let m = ws.meta(DONE, id);
        prompt += m["prompt_tokens"].as_f64().unwrap();
        generated += m["generated_tokens"].as_f64().unwrap();
    }
    assert!(generated > 0.0);
    assert_eq!(s.value("nrvna_prompt_tokens_total", &[]), prompt);
    assert_eq!(s.value("nrvna_generated_tokens_total", &[]), generated);
    assert_eq!(s.value("nrvna_jobs_finished_total", &[("state", "done")]), 6.0);
    assert_eq!(s.value("nrvna_jobs_finished_total", &[("state", "failed")]), 2.0);
    assert_eq!(s.value("nrvna_job_failures_total", &[("reason", "bad_input")]), 2.0);
    assert_eq!(s.sum("nrvna_job_failures_total"), 2.0);
    assert_eq!(s.value("nrvna_job_run_seconds_count", &[]), 8.0);
    // The bad job failed before its wait was taken (its files were unusable).
    assert_eq!(s.value("nrvna_job_queue_wait_seconds_count", &[]), 7.0);
    assert!(s.value("nrvna_job_queue_wait_seconds_sum", &[]) > 0.0);
    assert_eq!(s.value("nrvna_job_run_seconds_bucket", &[("le", "+Inf")]), 8.0);
    // Nothing of this daemon's own is queued or running now.
    assert_eq!(s.sum("nrvna_daemon_jobs"), 0.0);
    // The batched engine decoded, with up to 2 sequences at once.
    let decodes = s.value("nrvna_engine_decodes_total", &[]);
    let seqs = s.value("nrvna_engine_decode_sequences_total", &[]);
    assert!(
        decodes > 0.0 && seqs >= decodes && seqs <= 2.0 * decodes,
        "{decodes} {seqs}"
    );
    assert!(s.value("nrvna_engine_kv_cells", &[]) > 0.0);
    assert!(s.value("nrvna_engine_kv_cells_used", &[]) <= s.value("nrvna_engine_kv_cells", &[]));
    assert_eq!(s.value("nrvna_recoveries_total", &[]), 0.0);
    for (family, t) in [
        ("nrvna_jobs", "gauge"),
        ("nrvna_daemon_jobs", "gauge"),
        ("nrvna_job_queue_wait_seconds", "histogram"),
        ("nrvna_job_run_seconds", "histogram"),
        ("nrvna_generated_tokens", "counter"),
        ("nrvna_prompt_tokens", "counter"),
        ("nrvna_job_failures", "counter"),
        ("nrvna_engine_kv_cells_used", "gauge"),
        ("nrvna_engine_decode_batch_sequences", "gauge"),
        ("nrvna_recoveries", "counter"),
    ] {
        assert_eq!(s.family_type(family), t, "{family}");
    }
    // Labels by priority and model: every priority, this daemon's model.
    let prios: Vec<&str> = s.samples["nrvna_daemon_jobs"]
        .iter()
        .map(|(l, _)| l["priority"].as_str())
        .collect();
    assert_eq!(prios.len(), 6, "{prios:?}");
    assert!(s.samples["nrvna_daemon_jobs"]
        .iter()
        .all(|(l, _)| !l["model"].is_empty()));

    // Two long jobs hold both workers (sampled as LONG_ENV samples: about
    // 430 tokens, many seconds); a job queued behind them is cancelled by
    // flw (no daemon involved): it shows at once in the counts.
    let slow = ["--max-tokens", "2000", "--temp", "0.8", "--seed", "1"];
    let long = ws.submit(&slow, LONG_PROMPT);
    let hold = ws.submit(&slow, LONG_PROMPT);
    assert!(
        wait_for(JOB, || ws.is_in(PROCESSING, &long) && ws.is_in(PROCESSING, &hold)),
        "{long} and {hold} never ran"
    );
    let queued = ws.submit(&[], "queued behind the long jobs");
    ws.flw(&["--cancel", &queued], STARTUP).expect_code(0, "flw --cancel");
    let moved = wait_for(Duration::from_secs(10), || {
        parse(&py, &get(&addr, "/metrics").1).jobs() == [0, 2, 6, 3]
    });
    assert!(moved, "the cancel did not show");
    assert_eq!(flw_counts(&ws), [0, 2, 6, 3]);

    // Failures by reason: running jobs cancelled, one past its timeout.
    for j in [&long, &hold] {
        ws.flw(&["--cancel", j, "--timeout", "120"], JOB)
            .expect_code(0, "flw --cancel (running)");
    }
    let late = ws.submit(&[&slow[..], &["--timeout", "0.3"]].concat(), LONG_PROMPT);
    assert_eq!(ws.wait_finished(&late, JOB), FAILED);
    assert_eq!(ws.wait_finished(&long, JOB), FAILED);
    assert_eq!(ws.wait_finished(&hold, JOB), FAILED);
    let s = parse(&py, &get(&addr, "/metrics").1);
    let why = format!(
        "{:?}; {late}: {}; {long}: {}",
        s.samples["nrvna_job_failures_total"],
        ws.read(FAILED, &late, "error.txt"),
        ws.read(FAILED, &long, "error.txt")
    );
    assert_eq!(
        s.value("nrvna_job_failures_total", &[("reason", "cancelled")]),
        2.0,
        "{why}"
    );
    assert_eq!(
        s.value("nrvna_job_failures_total", &[("reason", "timeout")]),
        1.0,
        "{why}"
    );
    assert_eq!(s.sum("nrvna_job_failures_total"), 5.0);
    assert_eq!(s.value("nrvna_jobs_finished_total", &[("state", "failed")]), 5.0);
    assert!(wait_for(Duration::from_secs(10), || parse(
        &py,
        &get(&addr, "/metrics").1
    )
    .jobs()
        == flw_counts(&ws)));
    assert_eq!(flw_counts(&ws), [0, 0, 6, 6]);

    // Anything but GET /metrics is a 404; the daemon stops cleanly and
    // takes the endpoint down.
    assert!(get(&addr, "/").0.contains(" 404 "), "{:?}", get(&addr, "/"));
    d.signal(libc::SIGTERM);
    d.wait_exit(JOB);
    assert_eq!(d.code(), 0);
    assert!(
        TcpStream::connect(&addr).is_err(),
        "still answering after the daemon stopped"
    );
}

#[test]
fn a_workspace_of_100000_jobs_is_scraped_within_100_ms() {
    let py = py();
    let ws = TestWs::new();
    ws.create_dirs();
    let t0 = Instant::now();
    let (done, failed) = (99_000u64, 1_000u64);
    for i in 0..done {
        std::fs::create_dir(
            ws.dir(DONE)
                .join(format!("{}_1_000001", 17_000_000_000_000_000_000u128 + i as u128)),
        )
        .unwrap();
    }
    for i in 0..failed {
        std::fs::create_dir(
            ws.dir(FAILED)
                .join(format!("{}_2_000001", 17_000_000_000_000_000_000u128 + i as u128)),
        )
        .unwrap();
    }
    eprintln!("100,000 job directories made in {:.1} s", t0.elapsed().as_secs_f64());
    let addr = free_addr();
    let mut d = ws.daemon(
        &["--engine", "echo", "--metrics", &addr, "--workers", "1"],
        &[("NRVNA_LOG_LEVEL", "info")],
    );
    d.wait_ready();
    wait_serving(&mut d, &addr);
    let mut times = Vec::new();
    let mut body = String::new();
    for _ in 0..11 {
        let t = Instant::now();
        let (status, b) = get(&addr, "/metrics");
        times.push(t.elapsed());
        assert!(status.contains(" 200 "), "{status}");
        body = b;
    }
    times.sort();
    let median = times[times.len() / 2];
    println!(
        "scrape of a 100,000-job workspace: median {:.2} ms, min {:.2} ms, max {:.2} ms (11 scrapes)",
        median.as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3,
        times[times.len() - 1].as_secs_f64() * 1e3
    );
    assert!(median < Duration::from_millis(100), "median scrape {median:?}");
    let s = parse(&py, &body);
    assert_eq!(s.jobs(), [0, 0, done, failed]);
    assert_eq!(s.jobs(), flw_counts(&ws));
    // The echo engine has no batch: no engine series.
    assert!(!s.samples.contains_key("nrvna_engine_decodes_total"));
}

#[test]
fn a_taken_metrics_address_stops_the_start_with_the_flag_named() {
    let ws = TestWs::new();
    ws.create_dirs();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut d = ws.daemon(&["--engine", "echo", "--metrics", &addr], &[]);
    d.wait_exit(STARTUP);
    assert_ne!(d.code(), 0);
    let log = d.log_text();
    assert!(log.contains("--metrics") && log.contains(&addr), "{log}");
    assert!(!ws.path().join(".nrvnad.ready").exists());
}

#[test]
fn shared_members_report_members_alive_recoveries_and_fenced_results() {
    let py = py();
    let ws = TestWs::new();
    ws.create_dirs();
    let env = [
        ("NRVNA_ENGINE", "echo"),
        ("NRVNA_LOG_LEVEL", "info"),
        ("NRVNA_LEASE_TTL", "1"),
    ];
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let mut a = ws.daemon(&["--shared", "--workers", "1", "--metrics", &addr_a], &env);
    wait_serving(&mut a, &addr_a);
    // a's id: the one member record while a runs alone.
    let mut ida = String::new();
    assert!(wait_for(STARTUP, || {
        let r = member_records(ws.path());
        ida = r
            .first()
            .and_then(|m| m["member"].as_str())
            .unwrap_or_default()
            .to_owned();
        r.len() == 1 && !ida.is_empty()
    }));
    let scrape = |addr: &str| parse(&py, &get(addr, "/metrics").1);
    assert_eq!(scrape(&addr_a).value("nrvna_members_alive", &[]), 1.0);
    // A slow job claimed by a; a is paused past its lease; b takes it back.
    let id = ws.submit(&[], "nrvna-test:sleep:4000:slow");
    assert!(
        wait_for(JOB, || std::fs::read_to_string(
            ws.job(PROCESSING, &id).join(".nrvna-claim")
        )
        .is_ok_and(|c| c.starts_with(&ida))),
        "a never claimed {id}"
    );
    let mut b = ws.daemon(&["--shared", "--workers", "1", "--metrics", &addr_b], &env);
    wait_serving(&mut b, &addr_b);
    assert!(
        wait_for(JOB, || scrape(&addr_b).value("nrvna_members_alive", &[]) == 2.0),
        "b never saw a alive"
    );
    a.signal(libc::SIGSTOP);
    assert!(
        wait_for(JOB, || scrape(&addr_b).value("nrvna_recoveries_total", &[]) == 1.0),
        "b never recovered {id}: {}",
        b.log_text()
    );
    assert!(
        wait_for(JOB, || scrape(&addr_b).value("nrvna_members_alive", &[]) == 1.0),
        "b still counts the paused a"
    );
    a.signal(libc::SIGCONT);
    assert_eq!(ws.wait_finished(&id, JOB), DONE);
    assert!(
        wait_for(JOB, || scrape(&addr_a).value("nrvna_fenced_results_total", &[]) == 1.0),
        "a never counted its fenced result: {}",
        a.log_text()
    );
    let (sa, sb) = (scrape(&addr_a), scrape(&addr_b));
    assert_eq!(sa.value("nrvna_jobs_finished_total", &[("state", "done")]), 0.0);
    assert_eq!(sb.value("nrvna_jobs_finished_total", &[("state", "done")]), 1.0);
    assert_eq!(sa.family_type("nrvna_members_alive"), "gauge");
    ws.ctl("stop", &["--all"]).expect_code(0, "nrvnad stop --all");
    a.wait_exit(STARTUP);
    b.wait_exit(STARTUP);
}
