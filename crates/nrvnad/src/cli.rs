//! Command-line interface of `nrvnad` (clap derive; each doc comment is the help).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

const AFTER_HELP: &str = "\
Exit codes:
  nrvnad MODEL WS      0 after a clean shutdown (SIGINT/SIGTERM) or a --drain with no new failures,
                       1 on an error or when --drain saw jobs fail
  nrvnad status WS     0 ready, 2 starting (model loading), 1 not running
  nrvnad stop WS       0 stopped or already absent, 1 still running after --timeout

Environment (a flag wins over its variable, a variable over the default):
  NRVNA_MODELS_DIR     where model names are looked up (default ./models)
  NRVNA_LOG_LEVEL      error, warn, info (default), debug, trace
  NRVNA_TEMP 0.8  NRVNA_TOP_K 40  NRVNA_TOP_P 0.9  NRVNA_MIN_P 0.05
  NRVNA_REPEAT_PENALTY 1.1  NRVNA_REPEAT_LAST_N 64  NRVNA_SEED (random per job)
  NRVNA_PREDICT 2048   default max tokens per job
  NRVNA_MAX_CTX 8192   context tokens (capped by the model); the batched engine shares them
  NRVNA_GPU_LAYERS 0   NRVNA_THREADS (cores)  NRVNA_MAX_PROMPT_SIZE (bytes, 1 MiB)
  NRVNA_MAX_RECOVERY_ATTEMPTS 3   NRVNA_CHAT_TEMPLATE_FILE (Jinja override)";

/// nrvnad: load a GGUF model once and process the jobs of a workspace.
#[derive(Parser, Debug)]
#[command(name = "nrvnad", version, args_conflicts_with_subcommands = true, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Report whether a daemon owns WS: exit 0 ready, 2 starting, 1 not running.
    Status {
        workspace: PathBuf,
        /// Print the daemon's info as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop the daemon that owns WS (SIGTERM, then wait for it to exit).
    Stop {
        workspace: PathBuf,
        /// Seconds to wait for the daemon to exit.
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
    },
}

/// Which engine runs inference.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineKind {
    /// One context shared by all claimed jobs, continuous batching (default).
    Batched,
    /// A fresh context per job, one per worker (the C++ design).
    PerJob,
    /// Test double: no model, the result is the prompt echoed back. For
    /// queue-mechanics tests and benchmarks only.
    Echo,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// GGUF model: a path, or a name looked up in ./models or $NRVNA_MODELS_DIR (".gguf" optional).
    pub model: Option<String>,
    /// Workspace directory (created if missing).
    pub workspace: Option<PathBuf>,
    /// Worker threads (= concurrent jobs).
    #[arg(short, long, env = "NRVNA_WORKERS", default_value_t = 4)]
    pub workers: u32,
    /// Process until the queue is idle, then exit (0 if no job failed, else 1).
    /// If another daemon owns the workspace, wait for it to exit first.
    #[arg(long)]
    pub drain: bool,
    /// Inference engine.
    #[arg(long, value_enum, env = "NRVNA_ENGINE", default_value = "batched")]
    pub engine: EngineKind,
}
