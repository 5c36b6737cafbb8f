//! Helpers shared by the integration tests: the real model, the real
//! binaries (`nrvnad`, `wrk`, `flw`), a fresh temporary workspace per test,
//! a `Daemon` guard that is killed on drop, and `wait_for` (polling with a
//! deadline instead of fixed sleeps).
//!
//! State directories are spelled out here on purpose: they are the on-disk
//! contract (docs/FORMAT.md), and the tests freeze it.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

pub const READY: &str = "input/ready";
pub const WRITING: &str = "input/writing";
pub const PROCESSING: &str = "processing";
pub const DONE: &str = "output";
pub const FAILED: &str = "failed";
/// Every state a published job can be in.
pub const STATES: [&str; 4] = [READY, PROCESSING, DONE, FAILED];

/// A prompt that makes the model write for a long time (hundreds of tokens
/// with `LONG_ENV`): for tests that need a job to be running.
pub const LONG_PROMPT: &str =
    "Write a very long story about a dragon and a knight, with many chapters. Make it as long as you can.";
/// Daemon settings under which `LONG_PROMPT` runs for many seconds
/// (seed 1 gives about 430 tokens).
pub const LONG_ENV: [(&str, &str); 3] = [("NRVNA_PREDICT", "2000"), ("NRVNA_TEMP", "0.8"), ("NRVNA_SEED", "1")];

/// Time limits: generous, because two tests share two cores.
pub const STARTUP: Duration = Duration::from_secs(60);
pub const JOB: Duration = Duration::from_secs(120);

/// The model the project's fetch script installs. Fails (never skips) when absent.
pub fn model() -> PathBuf {
    let p = repo_root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.is_file(),
        "model missing: run scripts/fetch-model.sh (expected {})",
        p.display()
    );
    p
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

pub fn nrvnad_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_nrvnad"))
}

/// The tests' Python environment, with the PyPI packages pinned in
/// scripts/pyenv-requirements.txt: `$NRVNA_TEST_PYENV` (a relative path is
/// from the repository root), else `test-pyenv` in the target directory.
/// scripts/pyenv.sh makes it (scripts/test.sh runs that first); a test
/// installs nothing, so that parallel tests never race to create it. Fails
/// with that command unless `import {modules}` works in it.
pub fn test_pyenv(modules: &str) -> PathBuf {
    let venv = match std::env::var_os("NRVNA_TEST_PYENV") {
        Some(v) => repo_root().join(v),
        None => nrvnad_bin()
            .parent()
            .and_then(Path::parent)
            .expect("target directory")
            .join("test-pyenv"),
    };
    let ok = Command::new(venv.join("bin/python"))
        .arg("-c")
        .arg(format!("import {modules}"))
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "the tests' Python environment {} is missing or cannot import {modules}: run scripts/pyenv.sh \
         (scripts/test.sh runs it before the tests; NRVNA_TEST_PYENV overrides the location)",
        venv.display()
    );
    venv
}

/// `wrk` or `flw`, built next to `nrvnad` by `cargo test --release --workspace`.
pub fn sibling_bin(name: &str) -> PathBuf {
    let p = nrvnad_bin().with_file_name(name);
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --release --workspace` first \
         (or run the suite with `cargo test --release --workspace`, which builds every binary)",
        p.display()
    );
    warn_if_stale(&p, &repo_root().join("crates").join(name).join("src"));
    p
}

/// Says so on stderr when a binary is older than its sources (a `-p nrvnad`
/// test run does not rebuild `wrk` and `flw`).
fn warn_if_stale(bin: &Path, src: &Path) {
    let mtime = |p: &Path| fs::metadata(p).and_then(|m| m.modified()).ok();
    let Some(built) = mtime(bin) else { return };
    let newest = fs::read_dir(src)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| mtime(&e.path()))
        .max();
    if newest.is_some_and(|n| n > built) {
        eprintln!(
            "warning: {} is older than {}; run `cargo build --release --workspace` to test the current code",
            bin.display(),
            src.display()
        );
    }
}

pub fn wrk_bin() -> PathBuf {
    sibling_bin("wrk")
}

pub fn flw_bin() -> PathBuf {
    sibling_bin("flw")
}

/// The member records of a shared workspace (`WS/.nrvna-members/*.json`),
/// sorted by member id; unreadable ones are skipped.
pub fn member_records(ws: &Path) -> Vec<Value> {
    let mut v: Vec<Value> = fs::read_dir(ws.join(".nrvna-members"))
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .filter_map(|e| serde_json::from_slice(&fs::read(e.path()).ok()?).ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort_by_key(|r| r["member"].as_str().unwrap_or("").to_owned());
    v
}

/// A small deterministic generator (xorshift64*), so that a failing run
/// can be replayed from its seed.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A command without any `NRVNA_*` variable from the caller's environment,
/// so that a developer's settings cannot change what the tests see.
pub fn clean_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new(program);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("NRVNA_") {
            c.env_remove(&k);
        }
    }
    c.env_remove("RUST_LOG");
    c
}

/// What a finished command printed and how it exited.
#[derive(Debug)]
pub struct Ran {
    /// `None` when killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Ran {
    /// Panics unless the exit code is `code`, showing everything.
    #[track_caller]
    pub fn expect_code(&self, code: i32, what: &str) -> &Ran {
        assert_eq!(
            self.code,
            Some(code),
            "{what}: expected exit code {code}\nstdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Runs `cmd` to the end (stdin closed), killing it and failing after `timeout`.
#[track_caller]
pub fn run(cmd: &mut Command, timeout: Duration) -> Ran {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    finish(child, timeout, &format!("{cmd:?}"))
}

/// Waits for a spawned child (with piped stdout and stderr) to exit.
#[track_caller]
pub fn finish(mut child: Child, timeout: Duration, what: &str) -> Ran {
    let t0 = Instant::now();
    let reader = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = r.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = reader(Box::new(child.stdout.take().expect("piped stdout")));
    let err = reader(Box::new(child.stderr.take().expect("piped stderr")));
    let mut status = None;
    wait_for(timeout, || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    let timed_out = status.is_none();
    if timed_out {
        let _ = child.kill();
        status = child.wait().ok();
    }
    let exited = t0.elapsed();
    let ran = Ran {
        code: status.and_then(|s| s.code()),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        elapsed: t0.elapsed(),
    };
    if ran.elapsed > exited + Duration::from_millis(500) {
        eprintln!(
            "note: {what} exited after {exited:?} but its output closed only after {:?}",
            ran.elapsed
        );
    }
    assert!(
        !timed_out,
        "{what} did not finish within {timeout:?}\nstdout: {}\nstderr: {}",
        ran.stdout, ran.stderr
    );
    ran
}

/// A fresh workspace in its own temp dir. On a failing test, prints the
/// logs of every daemon it ran.
pub struct TestWs {
    tmp: tempfile::TempDir,
    ws: PathBuf,
    logs: AtomicU32,
}

impl TestWs {
    pub fn new() -> TestWs {
        let tmp = tempfile::Builder::new()
            .prefix("nrvnad-it-")
            .tempdir()
            .expect("temp dir");
        let ws = tmp.path().join("ws");
        TestWs {
            tmp,
            ws,
            logs: AtomicU32::new(0),
        }
    }

    /// The workspace root (created by the first tool that runs on it, or
    /// by [`TestWs::create_dirs`]).
    pub fn path(&self) -> &Path {
        &self.ws
    }

    pub fn tmp(&self) -> &Path {
        self.tmp.path()
    }

    /// Creates the state directories, for hand-made jobs.
    pub fn create_dirs(&self) {
        for d in [WRITING, READY, PROCESSING, DONE, FAILED] {
            fs::create_dir_all(self.ws.join(d)).expect("creating a state directory");
        }
    }

    fn next_log(&self) -> PathBuf {
        let n = self.logs.fetch_add(1, Ordering::SeqCst) + 1;
        self.tmp.path().join(format!("nrvnad-{n}.log"))
    }

    pub fn dir(&self, state: &str) -> PathBuf {
        self.ws.join(state)
    }

    pub fn job(&self, state: &str, id: &str) -> PathBuf {
        self.ws.join(state).join(id)
    }

    /// The state directories that hold `id` (a healthy workspace: at most one).
    pub fn states_of(&self, id: &str) -> Vec<&'static str> {
        STATES
            .into_iter()
            .filter(|s| fs::symlink_metadata(self.job(s, id)).is_ok())
            .collect()
    }

    /// Whether `id` is in `state`.
    pub fn is_in(&self, state: &str, id: &str) -> bool {
        fs::symlink_metadata(self.job(state, id)).is_ok()
    }

    /// Names in a state directory, sorted.
    pub fn names_in(&self, state: &str) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.dir(state))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// A file of a job, as text (panics with the job's listing when absent).
    #[track_caller]
    pub fn read(&self, state: &str, id: &str, file: &str) -> String {
        let p = self.job(state, id).join(file);
        fs::read_to_string(&p).unwrap_or_else(|e| {
            panic!(
                "reading {}: {e}; the job directory holds {:?}",
                p.display(),
                fs::read_dir(self.job(state, id))
                    .map(|rd| rd
                        .flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect::<Vec<_>>())
                    .unwrap_or_default()
            )
        })
    }

    #[track_caller]
    pub fn meta(&self, state: &str, id: &str) -> Value {
        let text = self.read(state, id, "meta.json");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("meta.json of {id}: {e}: {text}"))
    }

    /// Makes a job by hand in `state`: the directory, then `files`.
    pub fn make_job(&self, state: &str, id: &str, files: &[(&str, &[u8])]) -> PathBuf {
        let d = self.job(state, id);
        fs::create_dir_all(&d).expect("creating a job directory");
        for (name, data) in files {
            if let Some(parent) = Path::new(name).parent().filter(|p| !p.as_os_str().is_empty()) {
                fs::create_dir_all(d.join(parent)).expect("creating a job subdirectory");
            }
            fs::write(d.join(name), data).expect("writing a job file");
        }
        d
    }

    /// Stages a job in input/writing/ and publishes it with one rename, the
    /// way a submitter must when a daemon may be watching.
    pub fn publish_job(&self, id: &str, files: &[(&str, &[u8])]) {
        self.make_job(WRITING, id, files);
        fs::rename(self.job(WRITING, id), self.job(READY, id)).expect("publishing a job");
    }

    /// `wrk WS ARGS...` (stdin closed).
    pub fn wrk(&self, args: &[&str]) -> Ran {
        run(clean_command(wrk_bin()).arg(&self.ws).args(args), STARTUP)
    }

    /// Submits `prompt` with `wrk` (plus `flags`) and returns the job id.
    #[track_caller]
    pub fn submit(&self, flags: &[&str], prompt: &str) -> String {
        let mut args = flags.to_vec();
        args.push(prompt);
        let r = self.wrk(&args);
        r.expect_code(0, "wrk");
        let id = r.stdout.trim().to_owned();
        assert!(
            !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit() || b == b'_'),
            "wrk printed {:?}, not a job id",
            r.stdout
        );
        id
    }

    /// `flw WS ARGS...`
    pub fn flw(&self, args: &[&str], timeout: Duration) -> Ran {
        self.flw_env(args, &[], timeout)
    }

    /// `flw WS ARGS...` with extra environment variables.
    pub fn flw_env(&self, args: &[&str], env: &[(&str, &str)], timeout: Duration) -> Ran {
        run(
            clean_command(flw_bin())
                .arg(&self.ws)
                .args(args)
                .envs(env.iter().copied()),
            timeout,
        )
    }

    /// `nrvnad SUBCOMMAND WS ARGS...` (status, stop).
    pub fn ctl(&self, sub: &str, args: &[&str]) -> Ran {
        run(clean_command(nrvnad_bin()).arg(sub).arg(&self.ws).args(args), STARTUP)
    }

    /// Starts `nrvnad MODEL WS ARGS...` with the test defaults, overridden by `env`.
    pub fn daemon(&self, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        Daemon::spawn(self, args, env)
    }

    /// Runs `nrvnad MODEL WS --drain ARGS...` to the end; returns it exited.
    #[track_caller]
    pub fn drain(&self, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let mut a = vec!["--drain"];
        a.extend_from_slice(args);
        let mut d = self.daemon(&a, env);
        d.wait_exit(JOB);
        d
    }

    /// Waits until `id` is in one of the terminal states; returns which.
    #[track_caller]
    pub fn wait_finished(&self, id: &str, timeout: Duration) -> &'static str {
        let mut st = None;
        let ok = wait_for(timeout, || {
            st = [DONE, FAILED].into_iter().find(|s| self.is_in(s, id));
            st.is_some()
        });
        assert!(
            ok,
            "job {id} did not finish within {timeout:?}; it is in {:?}",
            self.states_of(id)
        );
        st.expect("a terminal state")
    }
}

impl Drop for TestWs {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let n = self.logs.load(Ordering::SeqCst);
        for i in 1..=n {
            let p = self.tmp.path().join(format!("nrvnad-{i}.log"));
            let text = fs::read_to_string(&p).unwrap_or_default();
            // llama.cpp's debug lines drown the daemon's own; show the latter.
            let lines: Vec<&str> = text.lines().filter(|l| !l.contains("llama.cpp:")).collect();
            let tail = &lines[lines.len().saturating_sub(150)..];
            eprintln!(
                "===== {} (last {} lines, llama.cpp lines left out) =====\n{}\n=====",
                p.display(),
                tail.len(),
                tail.join("\n")
            );
        }
        eprintln!("workspace listing:");
        for s in [WRITING, READY, PROCESSING, DONE, FAILED] {
            eprintln!("  {s}: {:?}", self.names_in(s));
        }
    }
}

/// A running `nrvnad MODEL WS`: stderr and stdout go to a log file in the
/// temp dir (printed when the test fails); killed (SIGKILL) on drop.
pub struct Daemon {
    child: Child,
    pub log: PathBuf,
    ws: PathBuf,
    status: Option<ExitStatus>,
}

/// The daemon environment of every test: short, greedy, deterministic jobs,
/// one llama.cpp thread per daemon (two tests share two cores), debug logs.
pub const BASE_ENV: [(&str, &str); 5] = [
    ("NRVNA_MAX_CTX", "2048"),
    ("NRVNA_PREDICT", "8"),
    ("NRVNA_TEMP", "0"),
    ("NRVNA_THREADS", "1"),
    ("NRVNA_LOG_LEVEL", "debug"),
];

impl Daemon {
    pub fn spawn(ws: &TestWs, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        Daemon::spawn_model(ws, model().as_os_str(), args, env)
    }

    /// `nrvnad MODEL WS ARGS...` with another MODEL argument (the echo
    /// engine loads nothing, so any name serves).
    pub fn spawn_model(ws: &TestWs, model: &std::ffi::OsStr, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let log = ws.next_log();
        let f = fs::File::create(&log).expect("creating the daemon log");
        let mut cmd = clean_command(nrvnad_bin());
        cmd.arg(model).arg(ws.path()).args(args);
        let mut vars: BTreeMap<&str, &str> = BASE_ENV.into_iter().collect();
        vars.extend(env.iter().copied());
        cmd.envs(vars)
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("log fd"))
            .stderr(f);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        Daemon {
            child,
            log,
            ws: ws.path().to_owned(),
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the daemon logged so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status
    }

    /// Waits until the model is loaded (`.nrvnad.ready`); fails if the
    /// daemon exits first.
    #[track_caller]
    pub fn wait_ready(&mut self) {
        let ready = self.ws.join(".nrvnad.ready");
        let mut exited = None;
        let ok = wait_for(STARTUP, || {
            exited = self.exited();
            exited.is_none() && ready.exists()
        });
        assert!(exited.is_none(), "nrvnad exited before it was ready ({exited:?})");
        assert!(ok, "nrvnad was not ready within {STARTUP:?}");
    }

    /// Waits for the daemon to exit; fails after `timeout`.
    #[track_caller]
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let ok = wait_for(timeout, || self.exited().is_some());
        assert!(ok, "nrvnad (pid {}) still runs after {timeout:?}", self.pid());
        self.status.expect("exited")
    }

    /// The exit code (panics if it has not exited, or died of a signal).
    #[track_caller]
    pub fn code(&mut self) -> i32 {
        let st = self.exited().expect("nrvnad has not exited");
        st.code().unwrap_or_else(|| panic!("nrvnad died of a signal: {st:?}"))
    }

    pub fn signal(&self, sig: libc::c_int) {
        send_signal(self.pid(), sig).unwrap_or_else(|e| panic!("kill({}, {sig}): {e}", self.pid()));
    }

    /// How many log lines contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log_text().lines().filter(|l| l.contains(needle)).count()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Parses the contract's timestamps (`2026-11-26T17:45:28.940123Z`, UTC).
#[track_caller]
pub fn parse_iso8601(s: &str) -> SystemTime {
    let bad = || panic!("not an ISO-8601 UTC timestamp: {s:?}");
    let num = |r: std::ops::Range<usize>| -> i64 { s.get(r).and_then(|t| t.parse().ok()).unwrap_or_else(bad) };
    if s.len() < 20 || !s.ends_with('Z') || &s[10..11] != "T" {
        bad();
    }
    let (y, m, d) = (num(0..4), num(5..7), num(8..10));
    let (hh, mm, ss) = (num(11..13), num(14..16), num(17..19));
    let micros = match s.get(19..s.len() - 1) {
        Some("") => 0,
        Some(f) if f.starts_with('.') => format!("{:0<6}", &f[1..])[..6].parse::<i64>().unwrap_or_else(|_| bad()),
        _ => bad(),
    };
    // Days from civil (H. Hinnant).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    std::time::UNIX_EPOCH + Duration::from_secs(secs as u64) + Duration::from_micros(micros as u64)
}

/// Quotes a path for `sh -c`.
pub fn sh_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

/// Sends `sig` (a libc signal number, `libc::SIGTERM` say) to `pid`.
pub fn send_signal(pid: u32, sig: libc::c_int) -> std::io::Result<()> {
    use rustix::process::{kill_process, Pid, Signal};
    let pid = i32::try_from(pid).ok().and_then(Pid::from_raw).expect("a positive pid");
    let sig = Signal::from_named_raw(sig).expect("a named signal");
    Ok(kill_process(pid, sig)?)
}

/// Makes a FIFO at `p` (mode 0644, less the umask), like mkfifo(3).
pub fn mkfifo(p: &Path) {
    use rustix::fs::{mknodat, FileType, Mode, CWD};
    mknodat(CWD, p, FileType::Fifo, Mode::from_raw_mode(0o644), 0)
        .unwrap_or_else(|e| panic!("mkfifo {}: {e}", p.display()));
}
