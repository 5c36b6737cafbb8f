//! nrvna next to llama-server on the same backlog (issue #27): 16, 64 and
//! 256 W16-style jobs sent at once, llama-server at its defaults and at
//! several `--parallel` settings against nrvna out of the box, through
//! `wrk`/`flw -W` and through nrvna-api with the same HTTP client.
//!
//! The runs themselves are driven by `scripts/peer_bench.py` (one client
//! for both HTTP servers: concurrent requests from Python's standard
//! library); this module finds llama-server, runs the driver, and turns its
//! medians into the table and the targets. Without a llama-server build it
//! skips, saying how to build one (`scripts/peer-build.sh`). With a second
//! build beside it, `llama-server-nofp16` (`scripts/peer-build.sh nofp16`:
//! native minus AVX512-FP16, as nrvna builds llama.cpp), that one runs too,
//! and "llama-server's best" is the fastest of either build.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use super::shape::predict;
use super::Ctx;
use crate::report::{opt, table, Section, Target};
use crate::stats::ratio;

/// llama-server's `--parallel` settings tried besides its defaults (8 ran
/// below 16 in a pilot at 64 jobs, 207 against 257 tok/s; 4 is its default).
const PARALLEL: [u32; 2] = [16, 32];

/// Where llama-server is: `NRVNA_LLAMA_SERVER`, else where
/// `scripts/peer-build.sh` puts it (`target/peer/bin/llama-server`).
pub fn llama_server(ctx: &Ctx) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NRVNA_LLAMA_SERVER") {
        return Some(PathBuf::from(p));
    }
    // The benchmark runs from target/release/: target/peer/ is beside it.
    let target = ctx.bins.me.parent()?.parent()?;
    let p = target.join("peer/bin/llama-server");
    p.is_file().then_some(p)
}

fn driver() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/peer_bench.py")
}

pub fn run(ctx: &Ctx) -> Result<Section> {
    ctx.require_model()?;
    let mut sec = Section::new("peer");
    let Some(server) = llama_server(ctx) else {
        let why = "llama-server is not built: scripts/peer-build.sh builds it into target/peer/ (about 10 minutes on 2 cores), or set NRVNA_LLAMA_SERVER";
        eprintln!("peer: skipped: {why}");
        sec.json = json!({ "skipped": why });
        sec.md = format!("## peer: nrvna next to llama-server\n\n**Skipped:** {why}.\n");
        return Ok(sec);
    };
    if !server.is_file() {
        bail!("NRVNA_LLAMA_SERVER={} is not a file", server.display());
    }
    let sizes = if ctx.quick { "8,32" } else { "16,64,256" };
    let bin_dir = ctx.bins.nrvnad.parent().context("the binaries' directory")?;
    let mut configs = vec!["server:default".to_owned()];
    configs.extend(PARALLEL.iter().map(|p| format!("server:np{p}:--parallel,{p}")));
    // The build without AVX512-FP16, as nrvna's own llama.cpp is built,
    // when `scripts/peer-build.sh nofp16` made one: at its defaults and
    // at the setting that was best in every pilot.
    let nofp16 = server.with_file_name("llama-server-nofp16");
    if nofp16.is_file() {
        let exe = nofp16.display();
        configs.push(format!("server:nofp16:exe={exe}"));
        configs.push(format!("server:nofp16-np16:exe={exe},--parallel,16"));
    }
    configs.extend(["wrk:default".to_owned(), "api:default".to_owned()]);
    let mut cmd = Command::new("python3");
    cmd.arg(driver())
        .arg("--bin")
        .arg(bin_dir)
        .arg("--server")
        .arg(&server)
        .arg("--model")
        .arg(&ctx.model)
        .args(["--jobs", sizes])
        .args(["--rounds", &ctx.rounds.to_string()])
        .args(["--tokens", &predict(ctx.quick).to_string()])
        .arg("--logs")
        .arg(&ctx.logs)
        .args(&configs)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let out = cmd.output().context("running scripts/peer_bench.py with python3")?;
    if !out.status.success() {
        bail!("scripts/peer_bench.py exited with {}", out.status);
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("reading scripts/peer_bench.py's JSON")?;
    let summary = v["summary"].as_array().cloned().unwrap_or_default();
    for r in v["runs"].as_array().into_iter().flatten() {
        for e in r["errors"].as_array().into_iter().flatten() {
            sec.problems.push(format!("peer: {}", e.as_str().unwrap_or_default()));
        }
    }

    let entry = |jobs: u64, face: &str, config: &str| {
        summary
            .iter()
            .find(|s| s["jobs"] == jobs && s["face"] == face && s["config"] == config)
    };
    let med = |jobs, face, config| entry(jobs, face, config).and_then(|s| s["tok_s_median"].as_f64());
    let rss = |jobs, face, config| entry(jobs, face, config).and_then(|s| s["peak_rss_mb_max"].as_f64());
    let best_server = |jobs: u64| -> Option<(f64, String)> {
        summary
            .iter()
            .filter(|s| s["jobs"] == jobs && s["face"] == "server")
            .filter_map(|s| Some((s["tok_s_median"].as_f64()?, s["config"].as_str()?.to_owned())))
            .max_by(|a, b| a.0.total_cmp(&b.0))
    };

    let mut rows = Vec::new();
    for s in &summary {
        let jobs = s["jobs"].as_u64().unwrap_or(0);
        let best = best_server(jobs);
        let rounds: Vec<String> = s["tok_s_by_round"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| t.as_f64().map_or("–".to_owned(), |x| format!("{x:.0}")))
            .collect();
        rows.push(vec![
            jobs.to_string(),
            s["face"].as_str().unwrap_or("?").to_owned(),
            s["config"].as_str().unwrap_or("?").to_owned(),
            opt(s["tok_s_median"].as_f64(), 1),
            rounds.join(" "),
            opt(ratio(s["tok_s_median"].as_f64(), best.as_ref().map(|b| b.0)), 2),
            opt(s["peak_rss_mb_max"].as_f64(), 0),
        ]);
    }
    let head = [
        "jobs",
        "face",
        "configuration",
        "tok/s (median)",
        "tok/s by round",
        "/ llama-server best",
        "peak RSS MB",
    ];
    sec.md = format!(
        "## peer: nrvna next to llama-server\n\n\
         Every job or request sent at once, {} greedy tokens each, the W16 prompts; \
         tok/s from the first submission to the last result, counted from the server's \
         `usage.completion_tokens` and the jobs' `generated_tokens`; llama-server `{}`; \
         medians of {} rounds in alternating order. Faces: `server` llama-server, \
         `wrk` nrvnad fed by `wrk` then `flw -W`, `api` nrvnad behind nrvna-api with \
         the same HTTP client as llama-server.\n\n{}",
        predict(ctx.quick),
        server.display(),
        ctx.rounds,
        table(&head, &rows)
    );
    sec.json = json!({ "server": server.display().to_string(), "driver": v });

    let big: Vec<u64> = if ctx.quick { vec![32] } else { vec![64, 256] };
    for &n in &big {
        for face in ["wrk", "api"] {
            sec.targets.push(Target::at_least(
                &format!("peer {n} jobs: nrvna ({face}) tok/s vs llama-server's best --parallel"),
                ratio(med(n, face, "default"), best_server(n).map(|b| b.0)),
                1.15,
                "x",
            ));
        }
    }
    let deep = *big.last().expect("sizes");
    sec.targets.push(Target::at_least(
        &format!("peer {deep} jobs, out of the box: nrvna (wrk) vs llama-server defaults"),
        ratio(med(deep, "wrk", "default"), med(deep, "server", "default")),
        1.3,
        "x",
    ));
    let small = if ctx.quick { 8 } else { 16 };
    for face in ["wrk", "api"] {
        sec.targets.push(Target::at_least(
            &format!("peer {small} jobs: nrvna ({face}) vs llama-server's best --parallel"),
            ratio(med(small, face, "default"), best_server(small).map(|b| b.0)),
            1.0,
            "x",
        ));
    }
    let server_rss = summary
        .iter()
        .filter(|s| s["jobs"] == deep && s["face"] == "server")
        .filter_map(|s| s["peak_rss_mb_max"].as_f64())
        .fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.min(x))));
    sec.targets.push(Target::at_most(
        &format!("peer {deep} jobs: nrvnad peak RSS vs llama-server's smallest"),
        ratio(rss(deep, "wrk", "default"), server_rss),
        1.0,
        "x",
    ));
    Ok(sec)
}
