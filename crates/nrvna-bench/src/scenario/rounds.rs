//! Repeated, interleaved runs for the rows that are divided by one another.
//!
//! A single daemon run and a single probe run taken minutes apart on a
//! shared machine differ by 15 to 30% for reasons that have nothing to do
//! with nrvna (other tenants' load), so a ratio of the two is mostly noise.
//! W16 and Gemma therefore run in rounds: each round runs the probe's best
//! single-sequence and best batch configurations again (chosen by the
//! probe scenario's pass over every configuration), then every daemon
//! configuration once. Each row reports the round with its median tok/s,
//! and every ratio uses medians, so one disturbed round moves nothing.

use std::path::Path;
use std::time::Duration;

use crate::report::opt;
use crate::stats::{median, median_index};
use crate::tools::Env;

use super::probe::{self, Best, Spec};
use super::{submit_and_drain_model, Ctx, Drained};

/// One daemon configuration's runs, one per round.
pub struct Config {
    pub engine: &'static str,
    pub workers: u32,
    pub runs: Vec<Drained>,
}

impl Config {
    /// The run a row reports: the complete run (all `n` jobs done, exit 0)
    /// with the median tok/s; when no run is complete, the last one, so
    /// that the row shows what went wrong.
    pub fn row(&self, n: usize) -> &Drained {
        &self.runs[self.row_index(n)]
    }

    /// The index in `runs` of [`Config::row`].
    pub fn row_index(&self, n: usize) -> usize {
        let tok: Vec<Option<f64>> = self.runs.iter().map(|d| d.tok_s().filter(|_| d.complete(n))).collect();
        median_index(&tok).unwrap_or(self.runs.len().saturating_sub(1))
    }

    /// The row's status: the reported run's ("ok", "daemon failed, ..."),
    /// and how many rounds completed when not all did.
    pub fn status(&self, n: usize) -> String {
        let (_, word) = self.row(n).problems(n);
        let complete = self.runs.iter().filter(|d| d.complete(n)).count();
        if complete == self.runs.len() {
            word
        } else {
            format!("{word}; {complete} of {} rounds complete", self.runs.len())
        }
    }

    /// tok/s of every round.
    pub fn tok_s_by_round(&self) -> Vec<Option<f64>> {
        self.runs.iter().map(Drained::tok_s).collect()
    }

    /// tok/s of every round, for the table ("98.1 / 102.9 / 101.0").
    pub fn by_round(&self) -> String {
        joined(&self.tok_s_by_round())
    }

    /// Problems of every round, one line each.
    pub fn problems(&self, n: usize) -> Vec<String> {
        self.runs.iter().flat_map(|d| d.problems(n).0).collect()
    }
}

/// Figures of every round for a table cell: "98.1 / – / 101.0".
fn joined(v: &[Option<f64>]) -> String {
    v.iter().map(|t| opt(*t, 1)).collect::<Vec<_>>().join(" / ")
}

/// A probe configuration run again once per round.
pub struct ProbeRuns {
    pub spec: Spec,
    /// tok/s of each round (`None` where the run failed).
    pub tok_s: Vec<Option<f64>>,
}

impl ProbeRuns {
    pub fn median(&self) -> Option<f64> {
        median(&self.tok_s)
    }

    pub fn by_round(&self) -> String {
        joined(&self.tok_s)
    }
}

/// What the rounds measured.
pub struct Measured {
    pub rounds: usize,
    pub configs: Vec<Config>,
    pub single: Option<ProbeRuns>,
    pub batch: Option<ProbeRuns>,
}

impl Measured {
    /// The probe's median tok/s with one sequence (`None` without a probe).
    pub fn probe_single(&self) -> Option<f64> {
        self.single.as_ref().and_then(ProbeRuns::median)
    }

    /// The probe's median tok/s with the batch size of the batched rows.
    pub fn probe_batch(&self) -> Option<f64> {
        self.batch.as_ref().and_then(ProbeRuns::median)
    }

    /// The probe re-runs, described for the section's prose.
    pub fn probe_text(&self) -> String {
        let one = |p: &Option<ProbeRuns>| {
            p.as_ref().map_or("probe not run".to_owned(), |p| {
                format!(
                    "{} tok/s ({}; rounds: {})",
                    opt(p.median(), 1),
                    p.spec.label(),
                    p.by_round()
                )
            })
        };
        format!(
            "with one sequence {}, with a batch {}",
            one(&self.single),
            one(&self.batch)
        )
    }

    pub fn probe_json(&self) -> serde_json::Value {
        let one = |p: &Option<ProbeRuns>| {
            p.as_ref().map(|p| {
                serde_json::json!({
                    "config": p.spec.label(),
                    "tok_s_by_round": p.tok_s,
                    "tok_s_median": p.median(),
                })
            })
        };
        serde_json::json!({ "single": one(&self.single), "batch": one(&self.batch) })
    }
}

/// What every round drains, and with what.
pub struct Plan<'a> {
    /// Label prefix of the daemon runs ("w16", "gemma").
    pub tag: &'a str,
    pub model: &'a Path,
    pub prompts: &'a [String],
    pub env: &'a Env,
    pub configs: &'a [(&'static str, u32)],
    pub deadline: Duration,
}

/// Runs `rounds` rounds of `plan`: in each, the best probe configurations
/// of `best` on `plan.model`, then every daemon configuration. Probe runs
/// that fail are added to `problems`.
pub fn run(ctx: &Ctx, plan: &Plan, best: &Best, rounds: usize, problems: &mut Vec<String>) -> Measured {
    let rounds = rounds.max(1);
    let probe_runs = |b: &Option<(f64, Spec)>| {
        b.as_ref().map(|&(_, spec)| ProbeRuns {
            spec,
            tok_s: Vec::new(),
        })
    };
    let mut m = Measured {
        rounds,
        configs: plan
            .configs
            .iter()
            .map(|&(engine, workers)| Config {
                engine,
                workers,
                runs: Vec::new(),
            })
            .collect(),
        single: probe_runs(&best.single),
        batch: probe_runs(&best.batch),
    };
    let n = plan.prompts.len();
    for round in 1..=rounds {
        for p in [&mut m.single, &mut m.batch].into_iter().flatten() {
            let label = p.spec.label();
            let t = match probe::run_child(ctx, plan.model, p.spec) {
                Ok(v) => v["tok_s"].as_f64(),
                Err(e) => {
                    problems.push(format!("{} round {round}: probe {label}: {e:#}", plan.tag));
                    None
                }
            };
            eprintln!(
                "{} round {round}/{rounds}: probe {label}: {} tok/s",
                plan.tag,
                opt(t, 1)
            );
            p.tok_s.push(t);
        }
        for c in &mut m.configs {
            let label = format!("{}-{}-x{}-r{round}", plan.tag, c.engine, c.workers);
            eprintln!("{label}: {n} jobs");
            let w = c.workers.to_string();
            c.runs.push(submit_and_drain_model(
                ctx,
                plan.model,
                &label,
                plan.prompts,
                &["--engine", c.engine, "--workers", &w],
                plan.env,
                plan.deadline,
            ));
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::Totals;

    /// A drained run of 4 jobs, 100 tokens over `processing` seconds;
    /// `done` of them finished.
    fn run(processing: f64, done: usize) -> Drained {
        Drained {
            label: format!("r{processing}"),
            daemon: None,
            ok: true,
            wall: Some(1.0 + processing),
            load: Some(1.0),
            rss_kib: None,
            others_cores: None,
            last_done: None,
            jobs: Vec::new(),
            totals: Totals {
                done,
                generated_tokens: 100,
                ..Totals::default()
            },
            error: None,
        }
    }

    fn config(runs: Vec<Drained>) -> Config {
        Config {
            engine: "batched",
            workers: 8,
            runs,
        }
    }

    #[test]
    fn the_row_is_the_median_round_of_the_complete_ones() {
        // tok/s 50, 100 and 25: the median is the first round's 50.
        let c = config(vec![run(2.0, 4), run(1.0, 4), run(4.0, 4)]);
        assert_eq!(c.row_index(4), 0);
        assert_eq!(c.by_round(), "50.0 / 100.0 / 25.0");
        assert_eq!(c.status(4), "ok");
        // The fastest round did not finish: the lower of the other two
        // middles is reported, and the status says a round is missing.
        let c = config(vec![run(2.0, 4), run(0.5, 3), run(4.0, 4)]);
        assert_eq!(c.row_index(4), 2);
        assert_eq!(c.status(4), "ok; 2 of 3 rounds complete");
        assert_eq!(c.problems(4).len(), 0);
        // No complete round: the last run, to show what went wrong.
        let c = config(vec![run(1.0, 1), run(1.0, 2)]);
        assert_eq!(c.row_index(4), 1);
    }

    #[test]
    fn probe_medians_skip_failed_rounds() {
        let p = ProbeRuns {
            spec: Spec {
                seqs: 16,
                flash_attn: true,
                kv_unified: false,
                threads: 2,
                tokens: 64,
            },
            tok_s: vec![Some(128.6), None, Some(118.7), Some(121.3)],
        };
        assert_eq!(p.median(), Some(121.3));
        assert_eq!(p.by_round(), "128.6 / – / 118.7 / 121.3");
    }
}
