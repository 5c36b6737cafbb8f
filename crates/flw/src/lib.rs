//! `flw`: everything a user reads from an nrvna workspace. One module per
//! mode; each returns an [`Outcome`] that becomes the exit code (0 done,
//! 1 failed or missing, 2 queued or running), so the codes mean the same
//! thing in every mode.

pub mod cancel;
pub mod cli;
pub mod export;
pub mod follow;
pub mod list;
pub mod prune;
pub mod scope;
pub mod show;
pub mod status;
pub mod ticker;
pub mod wait;

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use nrvna_core::{JobId, Workspace};

pub use cli::Args;

use scope::Scope;

/// How a mode ended, as the exit code says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 0: done (or nothing left to do).
    Done,
    /// 1: failed or missing.
    Failed,
    /// 2: queued or running, or a wait timed out.
    Pending,
}

impl Outcome {
    pub fn code(self) -> u8 {
        match self {
            Outcome::Done => 0,
            Outcome::Failed => 1,
            Outcome::Pending => 2,
        }
    }
}

impl From<Outcome> for ExitCode {
    fn from(o: Outcome) -> ExitCode {
        ExitCode::from(o.code())
    }
}

/// Runs `flw` with parsed arguments. Results go to stdout; errors are
/// returned for `main` to print (exit 1).
pub fn run(args: Args) -> Result<ExitCode> {
    run_outcome(args).map(ExitCode::from)
}

/// [`run`], with the outcome before it becomes an exit code.
pub fn run_outcome(args: Args) -> Result<Outcome> {
    let ws = open_workspace(&args)?;
    let scope = Scope::from_args(args.tag.as_deref(), args.children.as_deref())?;
    if args.long && (scope.is_all() || args.wait_all) {
        bail!("-l/--long is a table of the jobs of --tag T or --children ID (without -W); give one of them");
    }
    if args.prune {
        return prune::prune(&ws, &prune::Request::from_args(&args)?);
    }
    if let Some(tag) = &args.export {
        return export::export(&ws, tag, args.errors);
    }
    if args.cancel {
        let id = parse_id(args.id.as_deref().unwrap_or_default())?;
        return cancel::cancel(&ws, &id, args.timeout);
    }
    if args.follow {
        let id = id_from_arg_or_stdin(args.id.as_deref(), "-f")?;
        return follow::follow(&ws, &id, args.timeout);
    }
    if args.wait {
        let id = id_from_arg_or_stdin(args.id.as_deref(), "-w")?;
        return wait::wait_one(&ws, &id, args.timeout, args.json);
    }
    if args.wait_all {
        return wait::wait_all(&ws, &scope, args.timeout, args.json);
    }
    if let Some(id) = &args.id {
        return show::show(&ws, &parse_id(id)?, args.json);
    }
    if !scope.is_all() {
        let how = match (args.json, args.long) {
            (true, _) => list::Listing::Json,
            (false, true) => list::Listing::Table,
            (false, false) => list::Listing::Ids,
        };
        return list::list(&ws, &scope, how);
    }
    status::status(&ws, args.json)
}

fn open_workspace(args: &Args) -> Result<Workspace> {
    Ok(Workspace::open(&args.workspace)?.with_settings(args.settings.settings()))
}

/// Parses a job id given by the user.
pub fn parse_id(s: &str) -> Result<JobId> {
    JobId::parse(s).map_err(|e| anyhow!("{s:?} is not a job id: {e}"))
}

/// The id from the command line, or else the first word on stdin (so that
/// `wrk WS prompt | flw WS -w` works). Reads only up to the end of that
/// word, so a writer that keeps stdin open does not block us.
fn id_from_arg_or_stdin(arg: Option<&str>, flag: &str) -> Result<JobId> {
    if let Some(s) = arg {
        return parse_id(s);
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        bail!("give a job id (flw WS {flag} ID), or pipe one in (wrk WS PROMPT | flw WS {flag})");
    }
    let word = first_word(stdin.lock()).context("reading a job id from stdin")?;
    if word.is_empty() {
        bail!("no job id on stdin (did the command before the pipe fail?); give one: flw WS {flag} ID");
    }
    parse_id(&word).context("reading a job id from stdin")
}

/// The first whitespace-separated word of `r` (at most 256 bytes of it).
pub fn first_word(r: impl BufRead) -> std::io::Result<String> {
    let mut word = Vec::new();
    for b in r.bytes() {
        let b = b?;
        if b.is_ascii_whitespace() {
            if word.is_empty() {
                continue;
            }
            break;
        }
        word.push(b);
        if word.len() > 256 {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&word).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_word_skips_leading_space_and_stops_at_the_end_of_the_word() {
        assert_eq!(first_word(&b"  \n12_3_4\nrest"[..]).unwrap(), "12_3_4");
        assert_eq!(first_word(&b"7"[..]).unwrap(), "7");
        assert_eq!(first_word(&b" \n "[..]).unwrap(), "");
    }

    #[test]
    fn exit_codes_are_0_1_2() {
        assert_eq!(
            [Outcome::Done, Outcome::Failed, Outcome::Pending].map(Outcome::code),
            [0, 1, 2]
        );
    }
}
