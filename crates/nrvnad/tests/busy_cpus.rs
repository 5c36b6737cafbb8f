//! The daemon on CPUs that other processes hold, on the real model.
//! llama.cpp's threads spin while they wait for one another, so a decode
//! slows 20 to 50 times when its threads lose their CPUs.
//! - At start: with the CPUs to itself, `--workers auto` and
//!   `NRVNA_FLASH_ATTN=auto` time decode steps, log and record their
//!   choice; when other processes hold the CPUs, the timings would not be
//!   its own, so it measures nothing, says why, keeps the defaults, and is
//!   ready within seconds.
//! - While it runs: the batched engine watches the CPU time its decodes
//!   get, warns with the `--threads` that would fit, and says when the
//!   CPUs are back.
//!
//! The tests run one at a time (`SERIAL`): each needs an idle machine for
//! part of it, and the other's spinning threads would take it.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::Value;

static SERIAL: Mutex<()> = Mutex::new(());

/// The engine's own thread count of a daemon started without settings on
/// a two-core machine (the tests' base environment runs one).
const THREADS: [(&str, &str); 1] = [("NRVNA_THREADS", "2")];

/// Seconds in "model ready in S s".
fn ready_secs(log: &str) -> f64 {
    log.lines()
        .find_map(|l| l.split("model ready in ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no 'model ready in' line: {log}"))
}

/// Threads that spin until dropped: four per CPU.
struct Hogs {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Hogs {
    fn start() -> Hogs {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..4 * cpus)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        Hogs { stop, threads }
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[test]
fn start_up_measurements_run_on_an_idle_machine_and_are_skipped_on_a_busy_one() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Idle: both choices measured, said, and recorded.
    let ws = TestWs::new();
    let mut d = ws.daemon(&[], &THREADS);
    d.wait_ready();
    let log = d.log_text();
    assert!(!log.contains("the machine is busy"), "{log}");
    assert!(
        log.contains("flash attention on (auto: 16 sequences")
            || log.contains("flash attention off (auto: 16 sequences"),
        "{log}"
    );
    let line = log
        .lines()
        .find(|l| l.contains("workers: ") && l.contains("(auto: a decode step"))
        .unwrap_or_else(|| panic!("no auto workers line: {log}"));
    let n: u32 = line
        .split("workers: ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("no count in {line}"));
    assert!([4, 8, 16, 32].contains(&n), "{line}");
    assert!(
        line.contains("tok/s at 4") && line.contains("with a stream per job"),
        "{line}"
    );
    assert!(log.contains(&format!("with {n} workers (batched engine)")), "{log}");
    let info: Value = serde_json::from_str(&std::fs::read_to_string(ws.path().join(".nrvnad.info")).unwrap()).unwrap();
    assert_eq!(info["workers"], n, "{info}");
    let idle_ready = ready_secs(&log);
    drop(d);

    // Busy: four spinning threads per CPU in this process. The daemon
    // finds its CPUs taken before it measures anything, says so, and keeps
    // the defaults; its jobs still run.
    let ws = TestWs::new();
    let ids: Vec<String> = ["rain", "snow"]
        .iter()
        .map(|t| ws.submit(&["--max-tokens", "4"], &format!("One word about {t}.")))
        .collect();
    let hogs = Hogs::start();
    let mut d = ws.daemon(&["--drain"], &THREADS);
    d.wait_ready();
    drop(hogs);
    for id in &ids {
        assert_eq!(ws.wait_finished(id, JOB), DONE, "{id}");
    }
    assert_eq!(d.wait_exit(JOB).code(), Some(0));
    let log = d.log_text();
    for said in [
        "flash attention left to llama.cpp (on where the backend has it): not measured (the machine is busy: \
         spinning on 2 CPUs for 50 ms, this process got",
        "flash attention with a KV stream per job left to llama.cpp (on where the backend has it): not measured (the \
         machine is busy",
        "--workers auto: batch sizes not measured (the machine is busy",
        "with 4 workers (batched engine)",
    ] {
        assert!(log.contains(said), "{said:?} not in {log}");
    }
    // Measured on the busy machine, each measurement took 6 to 44 s (the
    // start, a minute); now the start stays within seconds.
    let busy_ready = ready_secs(&log);
    assert!(
        busy_ready < 10.0,
        "ready after {busy_ready} s on the busy machine ({idle_ready} s idle)"
    );
    eprintln!("model ready in {idle_ready:.2} s idle, {busy_ready:.2} s busy");
}

#[test]
fn decoding_on_taken_cpus_warns_with_threads_that_fit_and_says_when_they_are_back() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ws = TestWs::new();
    // Settings given, so that nothing is measured at start.
    let env = [("NRVNA_THREADS", "2"), ("NRVNA_FLASH_ATTN", "on")];
    let mut d = ws.daemon(&["--workers", "4"], &env);
    d.wait_ready();
    let submit = |n: usize, tokens: &str| -> Vec<String> {
        (0..n)
            .map(|i| {
                ws.submit(
                    &["--max-tokens", tokens],
                    &format!("Write a long story about the number {i}."),
                )
            })
            .collect()
    };
    // Busy: the engine's first two seconds of decoding get at most a fifth
    // of its CPUs.
    let hogs = Hogs::start();
    let slow = submit(4, "64");
    let warned = wait_for(Duration::from_secs(120), || {
        d.log_text().contains("[WARN] [Engine] decoding got")
    });
    drop(hogs);
    let log = d.log_text();
    assert!(warned, "no warning while the CPUs were taken: {log}");
    let line = log
        .lines()
        .find(|l| l.contains("[WARN] [Engine] decoding got"))
        .expect("the warning");
    assert!(
        line.contains("of the CPU time of its 2 threads") && line.contains("here --threads 1"),
        "{line}"
    );
    for id in &slow {
        assert_eq!(ws.wait_finished(id, JOB), DONE, "{id}");
    }
    // Idle again: jobs until a window of decoding of its own has passed
    // (two seconds), and the engine says the CPUs are back.
    let t0 = std::time::Instant::now();
    loop {
        for id in &submit(16, "64") {
            assert_eq!(ws.wait_finished(id, JOB), DONE, "{id}");
        }
        if d.log_text().contains("decoding gets its CPUs again") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no word that the CPUs are back: {}",
            d.log_text()
        );
    }
    // One warning for the busy spell (they repeat every ten minutes at most).
    assert_eq!(d.log_text().matches("[WARN] [Engine] decoding got").count(), 1);
}
