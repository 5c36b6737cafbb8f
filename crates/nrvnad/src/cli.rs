//! Command-line interface of `nrvnad` (clap derive; each doc comment is the
//! help). Every setting is a flag with an `NRVNA_*` variable behind it: a
//! flag wins over its variable, a variable over the default, and a bad value
//! is an error that names where it came from.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

const AFTER_HELP: &str = "\
Exit codes:
  nrvnad MODEL WS      0 after a clean shutdown (SIGINT/SIGTERM) or a --drain with no new failures;
                       1 on an error, when --drain saw jobs fail, or when jobs were still running
                       at the end of --stop-grace (they stay in processing/ for the next start);
                       3 on an engine fault (claiming stopped; claimed jobs stay recoverable);
                       130 on a second signal
  nrvnad status WS     0 ready, 2 starting (model loading), 1 not running
                       (shared workspaces: 0 when a member is ready, 2 when members are
                       only starting, 1 when there is none)
  nrvnad stop WS       0 stopped or already absent, 1 still running after --timeout

Every flag below can also be set by the environment variable shown with it
(a flag wins over its variable, a variable over the default).";

/// nrvnad: load a GGUF model once (or several, on demand: --models DIR,
/// or MODEL... WS) and process the jobs of a workspace.
#[derive(Parser, Debug)]
#[command(
    name = "nrvnad",
    version,
    disable_version_flag = true,
    args_conflicts_with_subcommands = true,
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// Print the version.
    #[arg(short = 'v', short_alias = 'V', long, action = clap::ArgAction::Version, global = true)]
    pub version: Option<bool>,
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Report whether a daemon owns WS, or which members share it: exit 0
    /// ready, 2 starting, 1 not running.
    Status {
        workspace: PathBuf,
        /// Print the daemon's info (or the members' records) as JSON.
        #[arg(long)]
        json: bool,
        /// Shared workspaces: only this host's members count (for a
        /// liveness probe: 0 when one of them is ready and its heartbeat is
        /// younger than its lease).
        #[arg(long)]
        local: bool,
    },
    /// Stop the daemon that owns WS, or this host's members of a shared WS
    /// (SIGTERM where it can be sent, a stop request file otherwise), then
    /// wait for them to exit.
    Stop {
        workspace: PathBuf,
        /// Seconds to wait for the daemon to exit.
        #[arg(long, default_value_t = 30.0)]
        timeout: f64,
        /// Shared workspaces: stop every member, on every host.
        #[arg(long)]
        all: bool,
    },
    /// Internal: parse the GBNF grammar on stdin with llama.cpp and print its
    /// reason for rejecting it on stderr (run by the daemon in a child
    /// process, so that llama.cpp's stderr never needs redirecting).
    #[command(hide = true)]
    ExplainGrammar { model: PathBuf },
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

impl EngineKind {
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Batched => "batched",
            EngineKind::PerJob => "perjob",
            EngineKind::Echo => "echo",
        }
    }
}

/// `--flash-attn` / `NRVNA_FLASH_ATTN`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlashAttnArg {
    /// Measure on and off at start, keep the faster.
    Auto,
    On,
    Off,
}

impl FlashAttnArg {
    pub fn engine(self) -> nrvna_engine::FlashAttn {
        match self {
            FlashAttnArg::Auto => nrvna_engine::FlashAttn::Auto,
            FlashAttnArg::On => nrvna_engine::FlashAttn::On,
            FlashAttnArg::Off => nrvna_engine::FlashAttn::Off,
        }
    }
}

fn lease_secs(v: &str) -> Result<f64, String> {
    match v.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && (0.2..=86_400.0).contains(&s) => Ok(s),
        _ => Err(format!("{v:?} is not a lease in seconds (0.2 to 86400)")),
    }
}

fn retain_interval(v: &str) -> Result<Duration, String> {
    match nrvna_core::retention::parse_duration(v)? {
        d if d >= Duration::from_millis(100) => Ok(d),
        _ => Err(format!("{v:?} is too short a retention interval (at least 0.1s)")),
    }
}

fn positive_secs(v: &str) -> Result<f64, String> {
    match v.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s >= 0.0 => Ok(s),
        _ => Err(format!("{v:?} is not a number of seconds (0 or more)")),
    }
}

/// `nrvnad MODEL WS [flags]`: every setting of a serving daemon.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// GGUF model: a path, or a name looked up in --models-dir (".gguf" optional).
    /// With --models DIR it may be left out: `nrvnad --models DIR WS`.
    pub model: Option<String>,
    /// Workspace directory (created if missing).
    pub workspace: Option<PathBuf>,
    /// More models, the workspace last: `nrvnad A.gguf B.gguf C.gguf WS`
    /// serves all three from one process (see --max-loaded).
    #[arg(value_name = "MORE")]
    pub more: Vec<String>,
    /// Serve every .gguf model in DIR as well (projectors and vocoders
    /// beside them, `*mmproj*`, `*vocoder*`, `*wavtokenizer*`, load with
    /// their model and are not models of their own). A job picks its model
    /// by `model` in params.json (`wrk --model NAME`, the API's `model`):
    /// its file name, stem or GGUF general.name.
    #[arg(long = "models", env = "NRVNA_MODELS", value_name = "DIR")]
    pub models: Option<PathBuf>,
    /// With several models: the one that runs jobs naming none (a name as
    /// jobs use them). Default: the only model; with several, the first
    /// MODEL given, else the first in --models DIR by name (logged).
    #[arg(long, env = "NRVNA_DEFAULT_MODEL", value_name = "NAME")]
    pub default_model: Option<String>,
    /// Most models loaded at once (least recently used idle one unloaded
    /// first). Default: no limit but --memory-budget.
    #[arg(long, env = "NRVNA_MAX_LOADED", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_loaded: Option<u32>,
    /// Most memory the loaded models may take together (`2G`, `800M`;
    /// powers of 1024), by estimate: a model's file sizes (weights,
    /// projector, vocoder) plus its KV cache, n_layer x n_ctx x
    /// (n_embd_k_gqa + n_embd_v_gqa) x 2 bytes, read from its GGUF header,
    /// n_ctx being --max-ctx capped by the model (times --workers for the
    /// per-job engine). A model larger than the budget still loads alone.
    #[arg(long, env = "NRVNA_MEMORY_BUDGET", value_name = "SIZE",
          value_parser = nrvna_core::retention::parse_size)]
    pub memory_budget: Option<u64>,
    /// Unload a model that ran no job for this long (`10m`, `1h`).
    /// Default: keep loaded models until room is needed.
    #[arg(long, env = "NRVNA_IDLE_UNLOAD", value_name = "DURATION",
          value_parser = nrvna_core::retention::parse_duration)]
    pub idle_unload: Option<Duration>,
    /// Several models: how long another model's jobs may wait behind the
    /// model that runs before the daemon switches to them (aging; a
    /// higher-priority job for another model switches at once). 0 switches
    /// in arrival order, as a one-slot router does.
    #[arg(long, env = "NRVNA_MAX_WAIT", value_name = "DURATION", default_value = "30s",
          value_parser = nrvna_core::retention::parse_duration)]
    pub max_wait: Duration,
    /// Worker threads (= jobs in flight), 1 to 256, or auto: the batched
    /// engine times a decode step at batch sizes 4, 8, 16, ... (each job
    /// holding a chat job's KV cells, as many as the KV cache holds) and
    /// runs the smallest within 5% of the best, logging what it measured;
    /// the other engines run 4.
    #[arg(short, long, env = "NRVNA_WORKERS", default_value = "auto", value_parser = parse_workers)]
    pub workers: u32,
    /// Limit the workspace's queue to N jobs (backpressure): recorded in
    /// WS/.nrvna-limits.json, where `wrk` and `nrvna-api` read it (and
    /// where it stays while no daemon runs); a submission that would pass
    /// it is refused (wrk exits 1, the gateway answers 429) and publishes
    /// nothing. 0 removes the limit; without the flag, a recorded limit
    /// stays as it is.
    #[arg(long, env = "NRVNA_MAX_QUEUED", value_name = "N")]
    pub max_queued: Option<u64>,
    /// Retention: remove done jobs (output/) finished longer ago than this
    /// (`90s`, `12h`, `7d`, `2w`). Retention never removes a queued or
    /// running job, a job tagged `keep` (`wrk --keep`), a line of a
    /// gateway batch that is not finished, or a job of a `wrk --batch`
    /// batch while another job of it is queued or running. Default (no --retain-* flag):
    /// keep every job forever.
    #[arg(long, env = "NRVNA_RETAIN_DONE", value_name = "DURATION",
          value_parser = nrvna_core::retention::parse_duration)]
    pub retain_done: Option<Duration>,
    /// Retention: remove failed jobs (failed/) finished longer ago than this.
    #[arg(long, env = "NRVNA_RETAIN_FAILED", value_name = "DURATION",
          value_parser = nrvna_core::retention::parse_duration)]
    pub retain_failed: Option<Duration>,
    /// Retention: keep at most N finished jobs (done and failed together);
    /// the oldest beyond it are removed.
    #[arg(long, env = "NRVNA_RETAIN_MAX_JOBS", value_name = "N")]
    pub retain_max_jobs: Option<u64>,
    /// Retention: keep at most this many bytes of finished jobs (`500M`,
    /// `2G`; powers of 1024); the oldest beyond it are removed.
    #[arg(long, env = "NRVNA_RETAIN_MAX_BYTES", value_name = "SIZE",
          value_parser = nrvna_core::retention::parse_size)]
    pub retain_max_bytes: Option<u64>,
    /// Retention: how often the retention thread prunes (a removed job
    /// leaves output/ or failed/ in one rename into WS/.nrvna-trash/ and is
    /// deleted there; with --shared, one member prunes at a time).
    #[arg(long, env = "NRVNA_RETAIN_INTERVAL", value_name = "DURATION", default_value = "60s",
          value_parser = retain_interval)]
    pub retain_interval: Duration,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g.
    /// 127.0.0.1:9464; port 0 picks a free one, logged at start): jobs by
    /// state, priority and model, queue wait and run time, tokens, batch
    /// size and KV cells, failures by reason, recoveries and shared-workspace
    /// counters. Unauthenticated: bind it to a private address. Off by default.
    #[arg(long, env = "NRVNA_METRICS", value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Process until the queue is idle, then exit (0 if no job failed, else 1).
    /// If another daemon owns the workspace, wait for it to exit first.
    #[arg(long)]
    pub drain: bool,
    /// Join WS as one member of many, on this host or others, instead of
    /// owning it alone: members claim jobs by the same rename, hold them
    /// under a lease kept alive by a heartbeat, and take back the jobs of a
    /// member whose heartbeat stops. Every daemon on WS must use it (an
    /// exclusive daemon and members refuse each other). Not understood by
    /// the C++ nrvnad.
    #[arg(long, env = "NRVNA_SHARED")]
    pub shared: bool,
    /// Shared members: seconds a member's heartbeat may stand still before
    /// the others take its jobs back (as seen on their own clocks).
    #[arg(long, env = "NRVNA_LEASE_TTL", default_value = "30", value_parser = lease_secs)]
    pub lease_ttl: f64,
    /// Find jobs by scanning input/ready/ every scan interval only, without
    /// inotify. Automatic on network filesystems (NFS, CIFS, Ceph, Lustre,
    /// GPFS, 9p, FUSE), where inotify misses other hosts' writes.
    #[arg(long, env = "NRVNA_POLL")]
    pub poll: bool,
    /// Inference engine.
    #[arg(long, value_enum, env = "NRVNA_ENGINE", default_value = "batched")]
    pub engine: EngineKind,
    /// Where model names are looked up.
    #[arg(long, env = "NRVNA_MODELS_DIR", default_value = "models")]
    pub models_dir: PathBuf,
    /// Log level: error, warn, info, debug or trace.
    #[arg(long, env = "NRVNA_LOG_LEVEL", default_value = "info",
          value_parser = ["error", "warn", "info", "debug", "trace"])]
    pub log_level: String,
    /// Seconds to wait after SIGINT/SIGTERM for running jobs to stop; after
    /// that the daemon exits anyway and they stay in processing/.
    #[arg(long, env = "NRVNA_STOP_GRACE", default_value = "10", value_parser = positive_secs)]
    pub stop_grace: f64,
    /// Times a job abandoned in processing/ is retried before it fails.
    #[arg(long, env = "NRVNA_MAX_RECOVERY_ATTEMPTS", default_value_t = 3)]
    pub max_recovery_attempts: u64,
    /// Claim nothing while the workspace's filesystem has less free space
    /// than this (MiB); a job whose result hit a full disk waits for space.
    #[arg(long, env = "NRVNA_MIN_FREE_MB", default_value = "16", value_parser = positive_secs)]
    pub min_free_mb: f64,
    /// Milliseconds between full scans of input/ready/ when no filesystem
    /// event arrives (inotify wakes the Scanner at once on local filesystems).
    #[arg(long, env = "NRVNA_SCAN_INTERVAL_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub scan_interval_ms: u64,
    /// Keep the files the daemon replaces or removes as spares in
    /// WS/.nrvna-spare/ and write its next files into them, instead of
    /// freeing an inode per job (0: free them, as a plain rename does).
    #[arg(long, env = "NRVNA_SPARES", default_value = "1", value_parser = nrvna_core::cli::switch)]
    pub spares: bool,
    /// fsync, size limits (each also from its NRVNA_* variable).
    #[command(flatten)]
    pub settings: nrvna_core::cli::SettingsArgs,
    /// Webhooks (job.* events of `wrk --notify`, response.* events):
    /// --webhook URL, NRVNA_WEBHOOK_SECRET, retries.
    #[command(flatten)]
    pub webhooks: nrvna_hooks::cli::WebhookArgs,
    /// A Jinja chat template that replaces the model's.
    #[arg(long, env = "NRVNA_CHAT_TEMPLATE_FILE")]
    pub chat_template_file: Option<PathBuf>,
    /// Multimodal projector (.gguf) for vision, image-embedding and
    /// speech-to-text jobs. Default: an mmproj*.gguf beside the model whose
    /// name holds the model's name (as the C++ daemon finds it); without
    /// one, media jobs fail with a reason that names this flag.
    #[arg(long, env = "NRVNA_MMPROJ")]
    pub mmproj: Option<PathBuf>,
    /// Vocoder (.gguf, a WavTokenizer decoder) for text-to-speech jobs,
    /// with an OuteTTS model as MODEL. Default: when the model's name
    /// holds "oute", a .gguf beside it whose name holds "vocoder" or
    /// "wavtokenizer" (as the C++ daemon finds it); without one, tts jobs
    /// fail with a reason that names this flag.
    #[arg(long, env = "NRVNA_VOCODER")]
    pub vocoder: Option<PathBuf>,
    /// The voice of tts jobs: an OuteTTS speaker profile (JSON with
    /// "words": [{"word", "duration", "codes"}]). Default: OuteTTS's
    /// en_male_1, as the C++ daemon speaks.
    #[arg(long, env = "NRVNA_TTS_SPEAKER")]
    pub speaker: Option<PathBuf>,
    /// Milliseconds silenced at the start of a tts job's audio (the
    /// vocoder's onset artefact; 0 keeps everything), as the C++ daemon.
    #[arg(long, env = "NRVNA_TTS_MUTE_MS", default_value_t = 250)]
    pub tts_mute_ms: u32,

    /// Default sampling temperature (0: greedy).
    #[arg(long, env = "NRVNA_TEMP", default_value_t = 0.8)]
    pub temp: f32,
    /// Default top-k (0: off).
    #[arg(long, env = "NRVNA_TOP_K", default_value_t = 40)]
    pub top_k: i32,
    /// Default top-p.
    #[arg(long, env = "NRVNA_TOP_P", default_value_t = 0.9)]
    pub top_p: f32,
    /// Default min-p.
    #[arg(long, env = "NRVNA_MIN_P", default_value_t = 0.05)]
    pub min_p: f32,
    /// Default repetition penalty (1: off).
    #[arg(long, env = "NRVNA_REPEAT_PENALTY", default_value_t = 1.1)]
    pub repeat_penalty: f32,
    /// Tokens the repetition penalty looks back over.
    #[arg(long, env = "NRVNA_REPEAT_LAST_N", default_value_t = 64)]
    pub repeat_last_n: i32,
    /// Default seed (random per job when unset; the seed used is recorded).
    #[arg(long, env = "NRVNA_SEED")]
    pub seed: Option<u32>,
    /// Default max tokens per job.
    #[arg(long, env = "NRVNA_PREDICT", default_value_t = 2048)]
    pub predict: u32,
    /// Context tokens (capped by the model); the batched engine shares them.
    #[arg(long, env = "NRVNA_MAX_CTX", default_value_t = 8192,
          value_parser = clap::value_parser!(u32).range(64..))]
    pub max_ctx: u32,
    /// Model layers offloaded to the GPU (needs a GPU build).
    #[arg(long, env = "NRVNA_GPU_LAYERS", default_value_t = 0)]
    pub gpu_layers: u32,
    /// llama.cpp threads for the whole process (default: the cores available).
    #[arg(long, env = "NRVNA_THREADS", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub threads: Option<u32>,
    /// Tokens per decode call (prompt chunk size).
    #[arg(long, env = "NRVNA_BATCH", default_value_t = 512,
          value_parser = clap::value_parser!(u32).range(16..))]
    pub batch: u32,
    /// Flash attention: auto measures both settings for a moment at start
    /// on this backend and keeps the faster (the choice is logged).
    #[arg(long, value_enum, env = "NRVNA_FLASH_ATTN", default_value = "auto")]
    pub flash_attn: FlashAttnArg,
    /// KV cache layout of the batched engine: auto runs short jobs (whose
    /// prompt plus max tokens fit a stream of max-ctx / (workers + 1)
    /// cells, at least 256) in a KV stream each (from the start, and again
    /// once two or more of them are in flight or waiting after a long
    /// job), so that a job's attention reads its own
    /// cells only, and everything else in one stream shared by all (needed
    /// by long jobs and media; switching waits for the running jobs to
    /// end); unified always shares one stream.
    #[arg(long, value_enum, env = "NRVNA_KV_LAYOUT", default_value = "auto")]
    pub kv_layout: KvLayout,
    /// Shortest shared prompt prefix, in tokens, worth reusing (0: no reuse).
    #[arg(long, env = "NRVNA_PREFIX_REUSE_MIN", default_value_t = 16)]
    pub prefix_reuse_min: u32,

    /// Test hook: the batched engine reports a failed decode at this decode
    /// call (counting from 1), to exercise the fault path on the real model.
    #[arg(long, env = "NRVNA_TEST_DECODE_FAULT", hide = true)]
    pub test_decode_fault: Option<u64>,
}

/// Parses the command line and the environment. A bad value from a
/// variable is reported with the variable's name.
pub fn parse() -> Cli {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match Cli::try_parse_from(&argv) {
        Ok(c) => c,
        Err(e) => {
            if let Some(line) = nrvna_core::cli::env_value_error::<Cli>(&e, &argv) {
                eprintln!("nrvnad: {line}");
                let _ = e.print();
                std::process::exit(2);
            }
            e.exit()
        }
    }
}

/// Prepares the process environment that native libraries read before
/// `main` (the one place besides clap that reads or writes variables).
/// On a failed assertion ggml attaches gdb to print a backtrace, which can
/// hang a daemon for a long time: turn that off unless the user set it.
///
/// It also fixes glibc's mmap threshold at [`MMAP_THRESHOLD`] unless the
/// user set `MALLOC_MMAP_THRESHOLD_`. By default glibc raises the threshold
/// to the size of each mmapped block it frees (up to 32 MiB), so after the
/// start-up measurements free their contexts, the daemon's own KV and
/// compute buffers landed on the heap next to the measurements' leftovers:
/// peak RSS rose by 25 to 37 MB (348 against 372 MB at `--workers 8`, 352
/// against 388 MB at `--workers auto`, SmolLM2-135M, /usr/bin/time).
pub fn prepare_process_env() {
    if std::env::var_os("GGML_NO_BACKTRACE").is_none() {
        std::env::set_var("GGML_NO_BACKTRACE", "1");
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; it is called
        // before any thread starts.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        }
    }
}

/// Allocations of at least this many bytes (KV caches, compute buffers)
/// get pages of their own, given back to the system when freed; smaller
/// ones (a token's logits, a batch) stay on the heap instead of costing a
/// mapping and its page faults each time.
pub const MMAP_THRESHOLD: i32 = 4 << 20;

/// `--kv-layout`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvLayout {
    /// Short jobs in a stream each while a backlog of them waits.
    Auto,
    /// One stream shared by every job.
    Unified,
}

/// `--workers auto` (the default), as a number: the engine picks it at start.
pub const AUTO_WORKERS: u32 = 0;
/// Workers of the per-job and echo engines under `--workers auto`.
pub const DEFAULT_WORKERS: u32 = 4;

/// `--workers`: 1 to 256, or `auto` ([`AUTO_WORKERS`]).
fn parse_workers(s: &str) -> Result<u32, String> {
    if s == "auto" {
        return Ok(AUTO_WORKERS);
    }
    match s.parse::<u32>() {
        Ok(n @ 1..=256) => Ok(n),
        _ => Err(format!("{s:?} is not a number of workers: give 1 to 256, or auto")),
    }
}
