//! Our `nrvnad status` and `nrvnad stop` on a daemon of the C++ tools, from
//! the lifecycle files as the C++ daemon writes them: it holds the flock on
//! `.nrvnad.lock` with its pid written inside, and `.nrvnad.info` is one
//! compact line. The stand-in is util-linux `flock` under the name
//! `nrvnad`, holding the lock the way the C++ daemon does.

mod common;

use std::fs;
use std::process::{Command, Stdio};

use common::*;
use serde_json::Value;

#[test]
fn status_and_stop_work_on_a_cpp_daemon_that_holds_the_lock() {
    let ws = TestWs::new();
    ws.create_dirs();
    let exe = ws.tmp().join("bin").join("nrvnad");
    fs::create_dir_all(exe.parent().unwrap()).unwrap();
    fs::copy("/usr/bin/flock", &exe).expect("util-linux flock");
    let lock = ws.path().join(".nrvnad.lock");
    let mut cpp = Command::new(&exe)
        .arg("-o")
        .arg(&lock)
        .args(["sleep", "600"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let pid = cpp.id();
    assert!(
        wait_for(STARTUP, || ws.ctl("status", &[]).code != Some(1)),
        "the stand-in never took the lock"
    );
    // What the C++ daemon writes once its model is loaded.
    fs::write(&lock, format!("{pid}\n")).unwrap();
    fs::write(ws.path().join(".nrvnad.pid"), format!("{pid}\n")).unwrap();
    fs::write(
        ws.path().join(".nrvnad.info"),
        format!(
            "{{\"pid\":{pid},\"model\":\"/models/qwen.gguf\",\"mmproj\":\"\",\"vocoder\":\"\",\"workers\":3,\"started_at\":\"2026-11-27T10:00:00Z\"}}\n"
        ),
    )
    .unwrap();
    fs::write(ws.path().join(".nrvnad.ready"), "2026-11-27T10:00:00Z\n").unwrap();

    let st = ws.ctl("status", &[]);
    st.expect_code(0, "status of the C++ daemon");
    assert!(
        st.stdout
            .starts_with(&format!("ready (pid {pid}, model /models/qwen.gguf, 3 workers, since")),
        "{}",
        st.stdout
    );
    let st = ws.ctl("status", &["--json"]);
    let v: Value = serde_json::from_str(st.stdout.trim()).unwrap();
    assert_eq!(
        (v["status"].as_str(), v["pid"].as_u64()),
        (Some("ready"), Some(u64::from(pid)))
    );
    assert_eq!(v["model"], "/models/qwen.gguf");
    // Our daemon refuses to start beside it.
    let mut ours = ws.daemon(&["--engine", "echo"], &[]);
    ours.wait_exit(STARTUP);
    assert_eq!(ours.code(), 1);
    assert!(ours.log_text().contains(&format!("pid {pid}")), "{}", ours.log_text());
    // And stops it.
    ws.ctl("stop", &["--timeout", "10"])
        .expect_code(0, "stop the C++ daemon");
    let st = cpp.wait().unwrap();
    assert!(!st.success(), "the stand-in should have died of SIGTERM: {st:?}");
    ws.ctl("status", &[]).expect_code(1, "status after stop");
}
