//! The dashboard (`/ui`) in a real browser: Debian's chromium driven by
//! PyPI playwright (tests/py/ui_browser.py) against the gateway in front of
//! the real daemon on the real model (SmolLM2 with the vision projector
//! fixture) and the OuteTTS fixture; and the jobs page of a 100,000-job
//! workspace, timed through the data endpoint and in the browser. Also the
//! dashboard's HTTP rules with the raw client (login, cookie, CSP, Origin
//! on POSTs, `/` for browsers and for API clients).
//!
//! Needs the model (scripts/fetch-model.sh), the fixtures
//! (scripts/fixtures.sh), the release `nrvnad` and `flw`, chromium
//! (scripts/setup.sh installs it) and playwright (scripts/pyenv.sh); a
//! missing piece fails with the command that provides it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nrvna_core::files::{ERROR_FILE, META_FILE, PROMPT_FILE, RESPONSE_FILE};
use nrvna_core::media::{load_for_submit, MediaKind};
use nrvna_core::meta::Status;
use nrvna_core::{JobId, JobType, Meta, Settings, State, Submission, Workspace};
use serde_json::Value;

const CHROMIUM: &str = "/usr/bin/chromium";

/// The screenshots the browser test writes to target/ui-screens/.
const PAGES: [&str; 11] = [
    "login",
    "overview",
    "jobs",
    "job-done",
    "job-cancelled",
    "job-failed-untrusted",
    "job-vision",
    "job-tts",
    "job-embed",
    "batches",
    "submit",
];

/// The Python environment with playwright, and chromium: both must be
/// there (this test fails, it does not skip, when they are not).
fn browser_python() -> PathBuf {
    let py = python();
    assert!(
        Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} is missing: install Debian's chromium (`apt-get install -y chromium`, which \
         scripts/setup.sh does as root)"
    );
    let ok = Command::new(&py)
        .args(["-c", "import playwright.sync_api"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "playwright is missing from the tests' Python environment: run scripts/pyenv.sh (it installs the \
         pinned playwright of scripts/pyenv-requirements.txt; no browser download is needed)"
    );
    py
}

fn screens() -> PathBuf {
    let d = repo_root().join("target/ui-screens");
    std::fs::create_dir_all(&d).expect("creating target/ui-screens");
    d
}

/// Runs a scenario of ui_browser.py; panics with its output when it fails;
/// returns its stdout.
fn browser(scenario: &str, env: &[(&str, String)]) -> String {
    run_py(
        Command::new(browser_python())
            .args(["ui_browser.py", scenario])
            .env("NRVNA_SCREENS", screens())
            .env("NRVNA_CHROMIUM", CHROMIUM)
            .envs(env.iter().map(|(k, v)| (k, v))),
        &format!("ui_browser.py {scenario}"),
    )
}

fn no_fsync(root: &Path) -> Workspace {
    Workspace::create(root).expect("workspace").with_settings(Settings {
        fsync: false,
        ..Settings::default()
    })
}

/// A finished job written straight into `output/` or `failed/`.
fn finished_job(ws: &Workspace, state: State, id: &JobId, prompt: &str, tags: &[&str], files: &[(&str, &str)]) {
    let dir = ws.job_dir(state, id);
    std::fs::create_dir(&dir).expect("job dir");
    std::fs::write(dir.join(PROMPT_FILE), prompt).expect("prompt.txt");
    let mut meta = Meta::new();
    meta.mode = Some(JobType::Text);
    meta.tags = tags.iter().map(|t| t.to_string()).collect();
    meta.submitted_at = Some("2026-01-02T03:04:05Z".into());
    meta.completed_at = Some("2026-01-02T03:04:06Z".into());
    meta.duration_s = Some(1.0);
    meta.status = Some(if state == State::Done {
        Status::Done
    } else {
        Status::Failed
    });
    meta.set_extra("generated_tokens", 7);
    for (name, body) in files {
        std::fs::write(dir.join(name), body).expect("job file");
    }
    std::fs::write(dir.join(META_FILE), meta.to_bytes()).expect("meta.json");
}

fn publish(ws: &Workspace, sub: Submission) -> JobId {
    sub.publish(ws).expect("publishing a job")
}

#[test]
fn the_dashboard_in_a_real_browser_on_the_real_model() {
    let py = browser_python();
    drop(py);
    let model = model();
    let vision = fixture("mmproj-vision-fixture.gguf");
    let dir = tempfile::tempdir().expect("temp dir");
    let ws_path = dir.path().join("ws");
    let ws = no_fsync(&ws_path);

    // Untrusted text, finished jobs written as a daemon would leave them.
    let xss = "<script>alert(1)</script> and <img src=x onerror=alert(2)>";
    let xss_done = JobId::generate();
    finished_job(&ws, State::Done, &xss_done, xss, &["untrusted"], &[("result.txt", xss)]);
    let xss_failed = JobId::generate();
    finished_job(
        &ws,
        State::Failed,
        &xss_failed,
        xss,
        &["untrusted"],
        &[
            (ERROR_FILE, "<b>error</b> <img src=x onerror=alert(3)>"),
            (RESPONSE_FILE, xss),
        ],
    );
    // A wrk --batch batch (its tag) for the Batches page.
    for (i, state) in [State::Done, State::Done, State::Failed].into_iter().enumerate() {
        let files: &[(&str, &str)] = if state == State::Done {
            &[("result.txt", "four")]
        } else {
            &[(ERROR_FILE, "context overflow")]
        };
        finished_job(
            &ws,
            state,
            &JobId::generate(),
            &format!("2+2? ({i})"),
            &["batch_1"],
            files,
        );
    }
    // A vision job, queued until the daemon starts.
    let mut v = Submission::text("Describe the picture.");
    v.job_type = JobType::Vision;
    v.params.max_tokens = Some(12);
    v.media
        .push(load_for_submit(&fixture("picture.png"), MediaKind::Image, ws.settings()).expect("picture"));
    let vision_job = publish(&ws, v);

    // The tts side: its own workspace, daemon and gateway (without a key:
    // the loopback-only dashboard, no login).
    let tts_dir = dir.path().join("tts");
    let tts_ws = no_fsync(&tts_dir);
    let _tts_daemon = start_daemon_with(
        &fixture("tts/OuteTTS-0.2-fixture.gguf"),
        &tts_dir,
        &["--vocoder", fixture("tts/WavTokenizer-fixture.gguf").to_str().unwrap()],
        &[("NRVNA_PREDICT", "12")],
    );
    let mut t = Submission::text("Hello there.");
    t.job_type = JobType::Tts;
    publish(&tts_ws, t);
    let mut tts_cmd = api_command(&tts_dir, &[]);
    tts_cmd.env_remove("NRVNA_API_KEY");
    let (_tts_api, tts_base) = start(tts_cmd);

    let (_api, base) = start_api(&ws_path);
    // Those of an earlier run must not pass for this one's.
    for name in PAGES {
        let _ = std::fs::remove_file(screens().join(format!("{name}.png")));
    }
    let argv = serde_json::json!([nrvnad_bin(), model, ws_path, "--workers", "2", "--mmproj", vision]);
    browser(
        "main",
        &[
            ("NRVNA_UI_BASE", base.clone()),
            ("NRVNA_API_KEY", KEY.to_owned()),
            ("NRVNA_WS", ws_path.display().to_string()),
            ("NRVNA_FLW", tool("flw").display().to_string()),
            ("NRVNA_DAEMON_ARGV", argv.to_string()),
            ("NRVNA_XSS_DONE", xss_done.as_str().to_owned()),
            ("NRVNA_XSS_FAILED", xss_failed.as_str().to_owned()),
            ("NRVNA_VISION_JOB", vision_job.as_str().to_owned()),
            ("NRVNA_TTS_BASE", tts_base),
        ],
    );
    for name in PAGES {
        let p = screens().join(format!("{name}.png"));
        assert!(
            p.metadata().is_ok_and(|m| m.len() > 1000),
            "screenshot {} written",
            p.display()
        );
    }
}

/// A raw request's reply with extra header lines and no key.
fn plain(base: &str, method: &str, path: &str, headers: &[&str], body: Option<&[u8]>) -> Reply {
    raw(
        base,
        &request(base, method, path, None, headers, body),
        Duration::from_secs(30),
    )
    .expect("a reply")
}

#[test]
fn dashboard_access_rules_over_http() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ws = dir.path().join("ws");
    let (_api, base) = start_api(&ws);
    let origin = format!("Origin: {base}");

    // `/`: a browser goes to the dashboard; an API client gets what it got before.
    let r = plain(&base, "GET", "/", &["Accept: text/html,*/*;q=0.8"], None);
    assert_eq!((r.status, r.header("location")), (303, Some("/ui/login")));
    assert_eq!(get(&base, "/").status, 404, "with the key: the JSON 404 as before");
    assert_eq!(
        plain(&base, "GET", "/", &[], None).status,
        401,
        "without the key: 401 as before"
    );

    // No session: pages go to the login form, data answers 401; the bearer key is not a session.
    let r = plain(&base, "GET", "/ui/jobs", &[], None);
    assert_eq!((r.status, r.header("location")), (303, Some("/ui/login")));
    assert_eq!(get(&base, "/ui/api/jobs").status, 401);
    let login = plain(&base, "GET", "/ui/login", &[], None);
    assert_eq!(login.status, 200);
    assert!(login
        .header("content-security-policy")
        .unwrap()
        .contains("script-src 'self'"));
    assert_eq!(login.header("x-content-type-options"), Some("nosniff"));

    // Login: a wrong key gets the form again with the reason and no cookie;
    // without our Origin it is 403; the right key sets the cookie.
    let form = |key: &str| format!("key={key}").into_bytes();
    let ct = "Content-Type: application/x-www-form-urlencoded";
    let wrong = plain(&base, "POST", "/ui/login", &[ct, &origin], Some(&form("nope")));
    assert_eq!(wrong.status, 200);
    assert!(wrong.header("set-cookie").is_none(), "no session for a wrong key");
    assert!(wrong.text().contains("<form") && wrong.text().contains("not the gateway's API key"));
    assert!(!wrong.text().contains("nope"), "the typed key is not echoed");
    let cross = plain(
        &base,
        "POST",
        "/ui/login",
        &[ct, "Origin: http://evil.example"],
        Some(&form(KEY)),
    );
    assert_eq!(cross.status, 403);
    assert_eq!(
        plain(&base, "POST", "/ui/login", &[ct], Some(&form(KEY))).status,
        403,
        "no Origin"
    );
    let ok = plain(&base, "POST", "/ui/login", &[ct, &origin], Some(&form(KEY)));
    assert_eq!((ok.status, ok.header("location")), (303, Some("/ui")));
    let set = ok.header("set-cookie").expect("a session cookie");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/ui"),
        "{set}"
    );
    assert!(!set.contains(KEY), "the key is not the cookie");
    let cookie = format!("Cookie: {}", set.split(';').next().unwrap());

    // With the session: pages and data; the session is not an API key.
    let page = plain(&base, "GET", "/ui/jobs", &[&cookie], None);
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-security-policy")
        .unwrap()
        .contains("frame-ancestors 'none'"));
    let jobs = plain(&base, "GET", "/ui/api/jobs", &[&cookie], None);
    assert_eq!(jobs.status, 200, "{}", jobs.text());
    assert_eq!(plain(&base, "GET", "/v1/models", &[&cookie], None).status, 401);

    // Submit needs our Origin too; then the job is in the list.
    let body = br#"{"prompt":"hello","priority":"high","max_tokens":5}"#;
    let json_ct = "Content-Type: application/json";
    assert_eq!(
        plain(&base, "POST", "/ui/api/submit", &[&cookie, json_ct], Some(body)).status,
        403
    );
    let sub = plain(
        &base,
        "POST",
        "/ui/api/submit",
        &[&cookie, json_ct, &origin],
        Some(body),
    );
    assert_eq!(sub.status, 200, "{}", sub.text());
    let id = sub.json()["id"].as_str().unwrap().to_owned();
    let list = plain(&base, "GET", "/ui/api/jobs?state=queued", &[&cookie], None).json();
    assert_eq!(list["rows"][0]["id"], id.as_str());
    assert_eq!(list["rows"][0]["priority"], "high");
    let bad = plain(
        &base,
        "POST",
        "/ui/api/submit",
        &[&cookie, json_ct, &origin],
        Some(br#"{"prompt":" "}"#),
    );
    assert_eq!(bad.status, 400);

    // Cancel from the dashboard: failed, with its reason.
    let c = plain(
        &base,
        "POST",
        &format!("/ui/api/job/{id}/cancel"),
        &[&cookie, &origin],
        None,
    );
    assert_eq!(c.json()["cancel"], "dequeued");
    let job = plain(&base, "GET", &format!("/ui/api/job/{id}"), &[&cookie], None).json();
    assert_eq!(job["state"], "failed");
    assert!(job["error"].as_str().unwrap().contains("cancelled"), "{job}");

    // Logout ends the session.
    let out = plain(&base, "POST", "/ui/logout", &[&cookie, &origin], None);
    assert_eq!(out.status, 303);
    assert_eq!(plain(&base, "GET", "/ui/api/jobs", &[&cookie], None).status, 401);
}

/// The gateway's resident memory in kB.
fn rss_kb(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[test]
fn the_jobs_page_of_100000_jobs_answers_in_under_300_ms() {
    const JOBS: usize = 100_000;
    let dir = tempfile::tempdir().expect("temp dir");
    let ws_path = dir.path().join("ws");
    let ws = no_fsync(&ws_path);
    let t0 = Instant::now();
    let micros = 1_780_000_000_000_000u64;
    for i in 0..JOBS {
        let id = JobId::parse(&format!("{:020}_1_{:06}", micros + i as u64 * 1000, i % 1_000_000)).unwrap();
        let (state, files): (State, &[(&str, &str)]) = if i % 10 == 0 {
            (State::Failed, &[(ERROR_FILE, "out of memory")])
        } else {
            (State::Done, &[("result.txt", "ok")])
        };
        let tag = format!("t{}", i % 7);
        finished_job(
            &ws,
            state,
            &id,
            &format!("prompt number {i}: tell me about the sea"),
            &[&tag],
            files,
        );
    }
    eprintln!("wrote {JOBS} jobs in {:.1}s", t0.elapsed().as_secs_f64());

    // The gateway without a key (loopback only): the dashboard needs no login.
    let empty = dir.path().join("empty");
    let mut cmd = api_command(&empty, &[]);
    cmd.env_remove("NRVNA_API_KEY");
    let (small, small_base) = start(cmd);
    let mut cmd = api_command(&ws_path, &[]);
    cmd.env_remove("NRVNA_API_KEY");
    let t1 = Instant::now();
    let (api, base) = start(cmd);
    let listed = t1.elapsed();
    let q = |path: &str| plain(&base, "GET", path, &[], None);
    assert!(
        wait_for(Duration::from_secs(600), || {
            let v = q("/ui/api/jobs?limit=1").json();
            v["read"] == v["total"] && v["total"] == JOBS
        }),
        "the index did not read all jobs: {}",
        q("/ui/api/jobs?limit=1").text()
    );
    let indexed = t1.elapsed();
    let _ = q("/ui/api/jobs?limit=1");
    let (rss, rss_empty) = (rss_kb(api.child.id()), rss_kb(small.child.id()));
    let _ = small_base;

    let mut timings = Vec::new();
    for path in [
        "/ui/jobs",
        "/ui/api/jobs?limit=50",
        "/ui/api/jobs?state=failed&limit=50",
        "/ui/api/jobs?tag=t3&q=NUMBER%209&limit=50&offset=50",
        "/ui/api/jobs?limit=50&offset=99950",
    ] {
        let ms: Vec<f64> = (0..9)
            .map(|_| {
                let t = Instant::now();
                let r = q(path);
                assert_eq!(r.status, 200, "{path}: {}", r.text());
                t.elapsed().as_secs_f64() * 1000.0
            })
            .collect();
        let m = median(ms.clone());
        eprintln!(
            "{path}: median {m:.1} ms, max {:.1} ms",
            ms.iter().cloned().fold(0.0, f64::max)
        );
        assert!(m < 300.0, "{path} took {m:.0} ms (median of 9): {ms:?}");
        timings.push((path, m));
    }
    let v = q("/ui/api/jobs?state=failed&limit=50").json();
    assert_eq!(
        (v["matched"].as_u64(), v["rows"].as_array().map(Vec::len)),
        (Some(10_000), Some(50))
    );
    let v = q("/ui/api/jobs?q=number%2099999").json();
    assert_eq!(
        v["rows"][0]["prompt"]
            .as_str()
            .map(|p| p.starts_with("prompt number 99999")),
        Some(true)
    );
    let first: Value = q("/ui/api/jobs?limit=1").json()["rows"][0].clone();
    assert!(
        first["id"].as_str().unwrap().ends_with("_099999"),
        "newest first: {first}"
    );

    let out = browser("bigjobs", &[("NRVNA_UI_BASE", base.clone())]);
    eprintln!(
        "100k jobs: listed in {:.2}s, details read in {:.1}s; gateway RSS {} MB (an empty workspace's: {} MB); \
         data endpoint medians {timings:?}; browser {}",
        listed.as_secs_f64(),
        indexed.as_secs_f64(),
        rss / 1024,
        rss_empty / 1024,
        out.trim()
    );
}
