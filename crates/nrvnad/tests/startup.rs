//! What the daemon measures at start, on the real model: with the CPUs to
//! itself, `--workers auto` and `NRVNA_FLASH_ATTN=auto` time decode steps,
//! log and record their choice; when other processes hold the CPUs, the
//! timings would not be its own (llama.cpp's threads spin while they wait
//! for one another, and a step slows by 20 to 50 times), so it gives up at
//! once, says why, keeps the defaults, and is ready within seconds.
//!
//! One test, alone in its binary: its first half needs an idle machine.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;
use serde_json::Value;

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
