//! Command-line interface of `nrvna-bench` (clap derive; each doc comment is the help).

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

const AFTER_HELP: &str = "\
Scenarios:
  probe    engine-bound probe: a bare decode loop on llama.cpp for 1 and 16 sequences,
           flash attention on/off x unified/per-sequence KV x threads (runs first, and
           always with w16: it picks the best configurations the rows are divided by)
  w16      16 jobs, per-job engine at 1/2/4 workers vs batched at 4/8/16 (--drain), in
           --rounds rounds, each with the probe's best configurations run again; medians
  prefix   32 jobs sharing a ~400-token instruction, batched x8, prefix reuse on vs off
  latency  idle daemon: publish-to-claim latency, and `wrk | flw -w` end to end (50 each)
  queue    10,000 jobs through the echo engine, with and without fsync
  scale    the W16 job 64 and 256 times: per-job at nproc workers, batched x16
  gemma    the probe, then W16 in rounds as above, on Gemma 3 270M (--gemma-model;
           scripts/fetch-model.sh gemma)
  peer     16, 64 and 256 jobs at once: llama-server (defaults, --parallel 16/32) next to
           nrvna out of the box through wrk/flw -W and through nrvna-api, in --rounds
           alternating rounds (scripts/peer_bench.py drives it; skipped, saying so, until
           scripts/peer-build.sh has built llama-server; about 30 minutes)

Every scenario runs on a fresh temporary workspace, spawning the release
binaries found next to this executable. Targets are printed as PASS/MISS; a
MISS does not change the exit code.

Exit codes:
  0  every scenario ran and every daemon and job succeeded (targets may MISS)
  1  the benchmark could not run (bad arguments, binaries missing, --out not writable)
  2  results were written, but a daemon exited non-zero, a job failed, or a
     scenario could not finish (see the Problems section of results.md)

Environment: NRVNA_* variables of the caller are not passed to the daemons;
each scenario sets its own. NRVNA_BENCH_COMMAND, when set (scripts/bench.sh
sets it), is the command recorded in results.md.";

/// nrvna-bench: measure nrvna (throughput, prefix reuse, latency, queue) on this machine.
#[derive(Parser, Debug)]
#[command(name = "nrvna-bench", version, args_override_self = true, after_help = AFTER_HELP)]
pub struct Cli {
    /// Directory for results.json, results.md and the daemons' logs (logs/).
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,
    /// Scenarios to run, comma-separated (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Scenario>,
    /// A smaller run for smoke tests (fewer jobs and tokens); its figures
    /// are not comparable with the targets.
    #[arg(long)]
    pub quick: bool,
    /// Rounds of the W16, Gemma and peer scenarios: each round runs the probe's
    /// best configurations again and every daemon configuration once, and
    /// the rows report medians (default 3; 1 with --quick).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=99))]
    pub rounds: Option<u32>,
    /// The GGUF model the daemons load.
    #[arg(long, default_value = "models/SmolLM2-135M-Instruct.Q4_1.gguf")]
    pub model: PathBuf,
    /// The larger model of the gemma scenario.
    #[arg(long, default_value = "models/gemma-3-270m-q4_k_m.gguf")]
    pub gemma_model: PathBuf,
    /// Internal: run one probe configuration (SEQS,FA,UNIFIED,THREADS,TOKENS)
    /// in this process and print it as JSON.
    #[arg(long, hide = true)]
    pub probe_child: Option<String>,
}

/// One benchmark scenario.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    Probe,
    W16,
    Prefix,
    Latency,
    Queue,
    Scale,
    Gemma,
    Peer,
}

impl Scenario {
    pub const ALL: [Scenario; 8] = [
        Scenario::Probe,
        Scenario::W16,
        Scenario::Prefix,
        Scenario::Latency,
        Scenario::Queue,
        Scenario::Scale,
        Scenario::Gemma,
        Scenario::Peer,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Probe => "probe",
            Scenario::W16 => "w16",
            Scenario::Prefix => "prefix",
            Scenario::Latency => "latency",
            Scenario::Queue => "queue",
            Scenario::Scale => "scale",
            Scenario::Gemma => "gemma",
            Scenario::Peer => "peer",
        }
    }
}
