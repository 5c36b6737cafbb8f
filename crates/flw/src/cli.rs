//! `flw`'s command line: clap derive, where each flag's doc comment is its
//! help. Kept apart from `main` so tests and `run` share one definition.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

const AFTER_HELP: &str = "\
Modes:
  flw WS                        status: daemon, counts per state, recent jobs
  flw WS ID                     a job's result (done), error (failed) or state
  flw WS -w [ID]                wait for one job, then as `flw WS ID`
  flw WS -W [--tag T | --children ID]
                                wait until no job in scope is queued or running
  flw WS --tag T | --children ID
                                the ids of the jobs in scope, one per line
                                (--json: NDJSON by id; -l: a table)
  flw WS -f [ID]                print a job's text as it is generated
  flw WS --cancel ID            cancel a queued or running job
  flw WS --export TAG           OpenAI Batch output (JSONL) for a wrk --batch tag
  flw WS --prune --older-than D [--state done|failed] [--max-jobs N] [--max-bytes SIZE] [--dry-run]
                                remove finished jobs (retention without a daemon):
                                the ids removed on stdout (--json: NDJSON), a summary
                                on stderr; never a queued or running job, a job tagged
                                keep (wrk --keep), or a line of an unfinished batch

-w and -f read the job id from stdin when none is given:
  wrk WS 'prompt' | flw WS -w

Exit codes:
  0  done: the job (every job in scope) finished; a listing of ids or a
     table (--tag/--children without --json); for --cancel: the job is
     no longer queued or running (stdout says `cancelled` when flw stopped it)
  1  failed or missing: the job (a job in scope) failed, the id is unknown,
     or flw itself failed (the reason is on stderr)
  2  queued or running: the job (a job in scope) has not finished, or
     --timeout passed first

stdout carries only results (artifacts, JSON, `cancelled`); everything else
goes to stderr. When stderr is a terminal, -w and -W show what they wait for.";

/// Read results from an nrvna workspace: status, one job's result, waiting,
/// following, cancelling, and exporting batches.
#[derive(Debug, Parser)]
#[command(
    name = "flw",
    version,
    disable_version_flag = true,
    after_long_help = AFTER_HELP,
    after_help = "Exit codes: 0 done, 1 failed or missing (or an error), 2 queued or running (or timed out). See --help for more."
)]
pub struct Args {
    /// The workspace directory.
    #[arg(value_name = "WS")]
    pub workspace: PathBuf,

    /// Print the version and exit (-V also works).
    #[arg(short = 'v', short_alias = 'V', long = "version", action = clap::ArgAction::Version)]
    pub version: Option<bool>,

    /// A job id. With -w or -f it may instead come on stdin.
    #[arg(value_name = "ID", conflicts_with_all = ["tag", "children", "wait_all", "export"])]
    pub id: Option<String>,

    /// Print JSON instead of text: the status counts, a job's summary, or
    /// one summary per line (NDJSON) for --tag/--children.
    #[arg(long)]
    pub json: bool,

    /// Wait until the job is done or failed, then print it as `flw WS ID`.
    #[arg(short = 'w', long = "wait", group = "mode", conflicts_with_all = ["tag", "children"])]
    pub wait: bool,

    /// Wait until no job in scope (all, --tag or --children) is queued or
    /// running; exit 1 when one of them failed.
    #[arg(short = 'W', long = "wait-all", visible_alias = "wait-idle", group = "mode")]
    pub wait_all: bool,

    /// With --tag/--children: a table (id, state, duration, detail) for a
    /// person instead of the ids.
    #[arg(short = 'l', long, conflicts_with_all = ["json", "id", "export"])]
    pub long: bool,

    /// Select the jobs with this tag in their meta.json.
    #[arg(long, value_name = "T")]
    pub tag: Option<String>,

    /// Select the jobs whose meta.json parent is this job id.
    #[arg(long, value_name = "ID")]
    pub children: Option<String>,

    /// Give up waiting after this many seconds (exit 2). For -w, -W and -f
    /// the default is to wait forever; for --cancel it is 10 seconds.
    #[arg(long, value_name = "S", value_parser = parse_seconds)]
    pub timeout: Option<Duration>,

    /// Print the job's text as it is generated, then exit as `flw WS ID`.
    #[arg(short = 'f', long = "follow", group = "mode", conflicts_with_all = ["tag", "children"])]
    pub follow: bool,

    /// Cancel the job: a queued one fails at once; for a running one the
    /// daemon is asked to stop it (it keeps the partial output).
    #[arg(long, group = "mode", requires = "id", conflicts_with_all = ["tag", "children"])]
    pub cancel: bool,

    /// Print the OpenAI Batch API output (JSONL) of the jobs with this tag,
    /// in the order of the batch file. Jobs not finished yet are skipped
    /// (exit 2); a job that names no request of the batch file (no
    /// batch.json, no custom_id) is left out and named on stderr (exit 1).
    #[arg(long, value_name = "TAG", group = "mode", conflicts_with_all = ["tag", "children", "json"])]
    pub export: Option<String>,

    /// With --export: print only the failed requests.
    #[arg(long, requires = "export")]
    pub errors: bool,

    /// Remove finished jobs by a retention policy (as nrvnad --retain-*
    /// does, for workspaces without a daemon): give --older-than, --max-jobs
    /// or --max-bytes. Oldest first; a removed job leaves output/ or failed/
    /// in one rename into WS/.nrvna-trash/ and is deleted there. Prints the
    /// removed ids (--json: one object per line), a summary on stderr.
    #[arg(long, group = "mode", conflicts_with_all = ["id", "tag", "children", "long"])]
    pub prune: bool,

    /// With --prune: remove jobs finished longer ago than this (`90s`,
    /// `12h`, `7d`, `0s` for all).
    #[arg(long, value_name = "D", requires = "prune", value_parser = nrvna_core::retention::parse_duration)]
    pub older_than: Option<Duration>,

    /// With --prune: only done or only failed jobs (default: both).
    #[arg(long, value_name = "STATE", requires = "prune", value_parser = ["done", "failed"])]
    pub state: Option<String>,

    /// With --prune: keep at most N finished jobs (the oldest beyond go).
    #[arg(long, value_name = "N", requires = "prune")]
    pub max_jobs: Option<u64>,

    /// With --prune: keep at most this many bytes of finished jobs (`500M`, `2G`).
    #[arg(long, value_name = "SIZE", requires = "prune", value_parser = nrvna_core::retention::parse_size)]
    pub max_bytes: Option<u64>,

    /// With --prune: print what would be removed, remove nothing.
    #[arg(long, requires = "prune")]
    pub dry_run: bool,

    /// fsync, size limits and the waiters' poll (each also from its
    /// NRVNA_* variable).
    #[command(flatten)]
    pub settings: nrvna_core::cli::SettingsArgs,
}

fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(0.0..=1e9).contains(&secs) {
        return Err(format!("{s:?} must be a number of seconds from 0 to 1e9"));
    }
    Ok(Duration::from_secs_f64(secs))
}
