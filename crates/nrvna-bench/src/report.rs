//! What a run reports: targets with PASS/MISS, each scenario's section
//! (JSON and a markdown table), and the assembled results.md.

use serde_json::{json, Value};

/// A goal printed next to a figure. A MISS is reported, never fatal.
#[derive(Clone, Debug)]
pub struct Target {
    pub name: String,
    /// The goal, as people read it ("≥ 2.5x").
    pub goal: String,
    /// The measured figure, formatted with its unit.
    pub measured: String,
    /// `None` when the figure could not be measured.
    pub pass: Option<bool>,
}

impl Target {
    fn new(name: &str, goal: String, value: Option<f64>, unit: &str, ok: impl Fn(f64) -> bool) -> Target {
        Target {
            name: name.to_owned(),
            goal,
            measured: value.map_or_else(|| "not measured".to_owned(), |v| format!("{}{unit}", fmt_num(v))),
            pass: value.map(ok),
        }
    }

    /// value ≥ goal
    pub fn at_least(name: &str, value: Option<f64>, goal: f64, unit: &str) -> Target {
        Target::new(name, format!("≥ {}{unit}", fmt_num(goal)), value, unit, |v| v >= goal)
    }

    /// value ≤ goal
    pub fn at_most(name: &str, value: Option<f64>, goal: f64, unit: &str) -> Target {
        Target::new(name, format!("≤ {}{unit}", fmt_num(goal)), value, unit, |v| v <= goal)
    }

    /// value < goal
    pub fn below(name: &str, value: Option<f64>, goal: f64, unit: &str) -> Target {
        Target::new(name, format!("< {}{unit}", fmt_num(goal)), value, unit, |v| v < goal)
    }

    pub fn verdict(&self) -> &'static str {
        match self.pass {
            Some(true) => "PASS",
            Some(false) => "MISS",
            None => "n/a",
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "goal": self.goal,
            "measured": self.measured,
            "pass": self.pass,
            "verdict": self.verdict(),
        })
    }
}

/// A number with as many decimals as its size deserves.
pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 10.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// An optional number with fixed decimals; "–" when missing.
pub fn opt(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.decimals$}"),
        _ => "–".to_owned(),
    }
}

/// A markdown table.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = format!("| {} |\n", headers.join(" | "));
    s.push_str(&format!("|{}\n", " --- |".repeat(headers.len())));
    for r in rows {
        s.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    s
}

/// One scenario's results.
#[derive(Debug)]
pub struct Section {
    pub name: &'static str,
    pub json: Value,
    pub md: String,
    pub targets: Vec<Target>,
    /// Daemons that exited non-zero, failed jobs, steps that could not run.
    pub problems: Vec<String>,
}

impl Section {
    pub fn new(name: &'static str) -> Section {
        Section {
            name,
            json: json!({}),
            md: String::new(),
            targets: Vec::new(),
            problems: Vec::new(),
        }
    }

    /// A scenario that could not run at all.
    pub fn failed(name: &'static str, why: &anyhow::Error) -> Section {
        let mut s = Section::new(name);
        let msg = format!("{name}: could not finish: {why:#}");
        s.json = json!({ "error": msg });
        s.md = format!("## {name}\n\n**Could not finish:** {why:#}\n");
        s.problems.push(msg);
        s
    }
}

/// The whole results.md.
pub fn markdown(head: &Value, sections: &[Section]) -> String {
    let m = &head["machine"];
    let mut s = String::from("# nrvna benchmark\n\n");
    if head["quick"].as_bool() == Some(true) {
        s.push_str(
            "**Quick run (`--quick`): fewer jobs and tokens; the figures are not comparable with the targets.**\n\n",
        );
    }
    let line = |k: &str, v: String| format!("- {k}: {v}\n");
    let text = |v: &Value| match v {
        Value::String(x) => x.clone(),
        Value::Null => "unknown".to_owned(),
        other => other.to_string(),
    };
    s.push_str(&line("Command", format!("`{}`", text(&head["command"]))));
    if head["command"] != head["argv"] {
        s.push_str(&line("Benchmark binary", format!("`{}`", text(&head["argv"]))));
    }
    s.push_str(&line(
        "Date (UTC)",
        format!("{} to {}", text(&head["started_at"]), text(&head["finished_at"])),
    ));
    s.push_str(&line(
        "Machine",
        format!(
            "`nproc` = {}, CPU {}, {} GiB RAM, {}",
            text(&m["nproc"]),
            text(&m["cpu_model"]),
            text(&m["mem_total_gib"]),
            text(&m["kernel"])
        ),
    ));
    s.push_str(&line(
        "Load average (1/5/15 min) at start / end",
        format!("{} / {}", text(&head["loadavg_start"]), text(&head["loadavg_end"])),
    ));
    s.push_str(&line(
        "Commit",
        format!(
            "{}{}",
            text(&m["git_commit"]),
            if m["git_dirty"].as_bool() == Some(true) {
                " (with uncommitted changes)"
            } else {
                ""
            }
        ),
    ));
    s.push_str(&line("Model", format!("`{}`", text(&head["model"]))));
    s.push('\n');

    let targets: Vec<&Target> = sections.iter().flat_map(|x| &x.targets).collect();
    if !targets.is_empty() {
        s.push_str("## Targets\n\n");
        let rows: Vec<Vec<String>> = targets
            .iter()
            .map(|t| {
                vec![
                    t.name.clone(),
                    t.goal.clone(),
                    t.measured.clone(),
                    format!("**{}**", t.verdict()),
                ]
            })
            .collect();
        s.push_str(&table(&["target", "goal", "measured", "result"], &rows));
        s.push('\n');
    }
    for sec in sections {
        s.push_str(&sec.md);
        s.push('\n');
    }
    let problems: Vec<&String> = sections.iter().flat_map(|x| &x.problems).collect();
    s.push_str("## Problems\n\n");
    if problems.is_empty() {
        s.push_str("None: every daemon exited 0 and every job finished done.\n");
    } else {
        for p in problems {
            s.push_str(&format!("- {p}\n"));
        }
    }
    s
}
