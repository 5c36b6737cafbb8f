//! The Slurm recipe (deploy/slurm/nrvna-members.sbatch) on a real,
//! single-node Slurm cluster started on this machine by
//! deploy/slurm/local-cluster.sh (which installs Debian's slurm and munge
//! when missing): an array job whose tasks are shared members drains a
//! workspace, every job done exactly once, by more than one member. Needs
//! root; scripts/test.sh runs it as root.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

fn script(name: &str) -> PathBuf {
    repo_root().join("deploy/slurm").join(name)
}

/// The local cluster, stopped on drop.
struct Cluster {
    dir: PathBuf,
    conf: String,
}

impl Cluster {
    fn start(dir: &Path) -> Cluster {
        let r = run(
            Command::new(script("local-cluster.sh")).arg("start").arg(dir),
            Duration::from_secs(600),
        );
        r.expect_code(0, "local-cluster.sh start");
        Cluster {
            dir: dir.to_owned(),
            conf: r.stdout.trim().to_owned(),
        }
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = clean_command(program);
        c.env("SLURM_CONF", &self.conf);
        c
    }

    /// `sbatch --array=0-(n-1)` of the recipe; returns the array job id.
    fn submit_array(&self, ws: &Path, model: &Path, n: usize, member_args: &str, env: &[(&str, &str)]) -> String {
        let mut c = self.cmd("sbatch");
        c.arg(format!("--array=0-{}", n - 1))
            .arg("--parsable")
            .arg(format!("--chdir={}", self.dir.display()))
            .arg(format!("--output={}/member-%A_%a.log", self.dir.display()))
            .arg(script("nrvna-members.sbatch"))
            .env("NRVNA_WS", ws)
            .env("NRVNA_MODEL", model)
            .env("NRVNAD", nrvnad_bin())
            .env("NRVNA_MEMBER_ARGS", member_args)
            .env("NRVNA_LOG_LEVEL", "info")
            .envs(env.iter().copied());
        let r = run(&mut c, Duration::from_secs(60));
        r.expect_code(0, "sbatch");
        r.stdout.trim().split(';').next().unwrap_or("").to_owned()
    }

    fn queued(&self, job: &str) -> usize {
        let r = run(self.cmd("squeue").args(["-h", "-j", job]), Duration::from_secs(30));
        r.stdout.lines().filter(|l| !l.trim().is_empty()).count()
    }

    fn member_logs(&self) -> String {
        let mut all = String::new();
        for e in std::fs::read_dir(&self.dir).unwrap().flatten() {
            if e.file_name().to_string_lossy().starts_with("member-") {
                all.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
        all
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("scancel")
            .env("SLURM_CONF", &self.conf)
            .arg("--user=root")
            .status();
        let _ = Command::new(script("local-cluster.sh"))
            .arg("stop")
            .arg(&self.dir)
            .status();
        if std::thread::panicking() {
            for f in ["slurmctld.log", "slurmd.log"] {
                let t = std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
                let lines: Vec<&str> = t.lines().collect();
                eprintln!(
                    "===== {f} =====\n{}",
                    lines[lines.len().saturating_sub(30)..].join("\n")
                );
            }
            eprintln!("===== member logs =====\n{}", self.member_logs());
        }
    }
}

/// Runs the array over a workspace: waits for `n` ready members, submits
/// `prompts` from two concurrent submitters, waits for every job, cancels
/// the array, and checks that each job was done once, by several members.
fn drain_with_array(cl: &Cluster, model: &Path, member_args: &str, env: &[(&str, &str)], prompts: Vec<String>) {
    let ws = TestWs::new();
    ws.create_dirs();
    let n = 2;
    let job = cl.submit_array(ws.path(), model, n, member_args, env);
    assert!(
        wait_for(Duration::from_secs(180), || member_records(ws.path())
            .iter()
            .filter(|r| r["state"] == "ready")
            .count()
            == n),
        "the array's members never came up: {:?}\n{}",
        member_records(ws.path()),
        cl.member_logs()
    );
    let ids = Arc::new(Mutex::new(Vec::new()));
    let halves: Vec<Vec<String>> = vec![
        prompts.iter().step_by(2).cloned().collect(),
        prompts.iter().skip(1).step_by(2).cloned().collect(),
    ];
    let subs: Vec<_> = halves
        .into_iter()
        .map(|half| {
            let (ids, wsp) = (ids.clone(), ws.path().to_owned());
            std::thread::spawn(move || {
                for p in half {
                    let r = run(clean_command(wrk_bin()).arg(&wsp).arg(&p), STARTUP);
                    r.expect_code(0, "wrk");
                    ids.lock().unwrap().push(r.stdout.trim().to_owned());
                }
            })
        })
        .collect();
    for s in subs {
        s.join().unwrap();
    }
    let ids = ids.lock().unwrap().clone();
    assert_eq!(ids.len(), prompts.len());
    for id in &ids {
        assert_eq!(ws.wait_finished(id, Duration::from_secs(600)), DONE, "{id}");
    }
    run(cl.cmd("scancel").arg(&job), Duration::from_secs(30)).expect_code(0, "scancel");
    assert!(
        wait_for(Duration::from_secs(120), || cl.queued(&job) == 0
            && member_records(ws.path()).is_empty()),
        "the array did not end after scancel: {:?}",
        member_records(ws.path())
    );
    let mut by = BTreeMap::<String, usize>::new();
    for id in &ids {
        assert_eq!(ws.states_of(id), vec![DONE], "{id}");
        let m = ws.meta(DONE, id);
        assert_eq!(m["recovery_attempts"].as_u64().unwrap_or(0), 0, "{id} ran twice: {m}");
        *by.entry(m["member"].as_str().expect("member in meta.json").to_owned())
            .or_default() += 1;
    }
    assert!(by.len() >= 2, "one member did everything: {by:?}");
    eprintln!(
        "slurm array job {job}: {} jobs done once each, by members {by:?}",
        ids.len()
    );
}

#[test]
#[ignore = "needs root (installs and runs slurm and munge); scripts/test.sh runs it as root"]
fn a_slurm_array_of_shared_members_drains_a_workspace_exactly_once() {
    assert!(
        rustix::process::geteuid().is_root(),
        "run as root, or leave this test ignored"
    );
    let tmp = tempfile::Builder::new().prefix("nrvna-slurm-").tempdir().unwrap();
    let cl = Cluster::start(tmp.path());
    // A few hundred jobs on the echo engine.
    drain_with_array(
        &cl,
        Path::new("echo.gguf"),
        "--engine echo --workers 2",
        &[],
        (0..300).map(|k| format!("nrvna-test:sleep:10:{k}")).collect(),
    );
    // A few dozen on the real model.
    drain_with_array(
        &cl,
        &model(),
        "--workers 2",
        &[("NRVNA_PREDICT", "6"), ("NRVNA_TEMP", "0"), ("NRVNA_MAX_CTX", "1024")],
        (0..30).map(|k| format!("Name a fruit ({k}).")).collect(),
    );
}
