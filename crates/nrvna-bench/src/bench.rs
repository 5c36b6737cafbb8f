//! The benchmark run: locates the binaries, runs the selected scenarios in
//! order, and rewrites results.json and results.md after each one, so an
//! interrupted run still leaves what it measured.

use std::path::Path;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{Context, Result};
use nrvna_core::time::iso8601_utc;
use serde_json::{json, Value};

use crate::cli::{Cli, Scenario};
use crate::machine;
use crate::report::{markdown, Section};
use crate::scenario::{self, Ctx};
use crate::tools::{quote, Bins};

pub fn run(cli: Cli) -> Result<ExitCode> {
    let bins = Bins::locate()?;
    let model = std::path::absolute(&cli.model).with_context(|| format!("resolving {}", cli.model.display()))?;
    let logs = cli.out.join("logs");
    let mut ctx = Ctx {
        bins,
        model,
        quick: cli.quick,
        rounds: cli.rounds.map_or(if cli.quick { 1 } else { 3 }, |r| r as usize),
        out: cli.out.clone(),
        logs,
        probe: None,
    };
    if let Some(spec) = &cli.probe_child {
        let v = scenario::probe::child(&ctx, spec)?;
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }

    std::fs::create_dir_all(&ctx.logs).with_context(|| format!("creating {}", ctx.logs.display()))?;
    // The throughput rows are divided by the probe's figures of the same
    // run: w16 and scale bring the probe along.
    let wanted = |s: Scenario| {
        cli.only.is_empty()
            || cli.only.contains(&s)
            || (s == Scenario::Probe && (cli.only.contains(&Scenario::W16) || cli.only.contains(&Scenario::Scale)))
    };
    let selected: Vec<Scenario> = Scenario::ALL.into_iter().filter(|&s| wanted(s)).collect();
    let argv: Vec<String> = std::env::args_os().map(|a| quote(&a)).collect();
    let argv = argv.join(" ");
    let command = std::env::var("NRVNA_BENCH_COMMAND").unwrap_or_else(|_| argv.clone());
    let mut head = json!({
        "command": command,
        "argv": argv,
        "quick": cli.quick,
        "rounds": ctx.rounds,
        "scenarios": selected.iter().map(|s| s.name()).collect::<Vec<_>>(),
        "started_at": iso8601_utc(SystemTime::now()),
        "finished_at": Value::Null,
        "machine": machine::describe(),
        "loadavg_start": machine::loadavg(),
        "loadavg_end": Value::Null,
        "model": ctx.model.display().to_string(),
    });
    eprintln!(
        "nrvna-bench: {} on {} cores (load {}), results in {}",
        selected.iter().map(|s| s.name()).collect::<Vec<_>>().join(","),
        head["machine"]["nproc"],
        head["loadavg_start"].as_str().unwrap_or("?"),
        cli.out.display()
    );

    let mut sections: Vec<Section> = Vec::new();
    for s in selected {
        eprintln!("== {}", s.name());
        let result = match s {
            Scenario::Probe => scenario::probe::run(&ctx).map(|(sec, best)| {
                ctx.probe = Some(best);
                sec
            }),
            Scenario::W16 => scenario::w16::run(&ctx),
            Scenario::Prefix => scenario::prefix::run(&ctx),
            Scenario::Latency => scenario::latency::run(&ctx),
            Scenario::Queue => scenario::queue::run(&ctx),
            Scenario::Scale => scenario::scale::run(&ctx),
            Scenario::Gemma => std::path::absolute(&cli.gemma_model)
                .map_err(anyhow::Error::from)
                .and_then(|m| scenario::scale::gemma(&ctx, &m)),
            Scenario::Peer => scenario::peer::run(&ctx),
        };
        let section = result.unwrap_or_else(|e| Section::failed(s.name(), &e));
        for p in &section.problems {
            eprintln!("problem: {p}");
        }
        sections.push(section);
        head["finished_at"] = json!(iso8601_utc(SystemTime::now()));
        head["loadavg_end"] = json!(machine::loadavg());
        write_results(&cli.out, &head, &sections)?;
    }

    println!("{}", targets_text(&sections));
    println!(
        "results: {} and {}",
        cli.out.join("results.md").display(),
        cli.out.join("results.json").display()
    );
    let problems = sections.iter().map(|s| s.problems.len()).sum::<usize>();
    if problems > 0 {
        eprintln!("nrvna-bench: {problems} problem(s); see the Problems section of results.md");
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

/// The targets as plain lines for the terminal.
fn targets_text(sections: &[Section]) -> String {
    let mut s = String::from("targets:\n");
    for t in sections.iter().flat_map(|x| &x.targets) {
        s.push_str(&format!(
            "  {:4}  {}: {} (goal {})\n",
            t.verdict(),
            t.name,
            t.measured,
            t.goal
        ));
    }
    s
}

fn write_results(out: &Path, head: &Value, sections: &[Section]) -> Result<()> {
    let mut v = head.clone();
    let mut scen = serde_json::Map::new();
    for s in sections {
        scen.insert(s.name.to_owned(), s.json.clone());
    }
    v["results"] = Value::Object(scen);
    v["targets"] = json!(sections
        .iter()
        .flat_map(|s| &s.targets)
        .map(|t| t.to_json())
        .collect::<Vec<_>>());
    v["problems"] = json!(sections.iter().flat_map(|s| &s.problems).collect::<Vec<_>>());
    let json_path = out.join("results.json");
    std::fs::write(&json_path, format!("{v:#}\n")).with_context(|| format!("writing {}", json_path.display()))?;
    let md_path = out.join("results.md");
    std::fs::write(&md_path, markdown(head, sections)).with_context(|| format!("writing {}", md_path.display()))?;
    Ok(())
}
