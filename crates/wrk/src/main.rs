//! The `wrk` binary: parse the command line, call [`wrk::run`], turn its
//! result into an exit code (0 published, 1 anything else).

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = match wrk::Args::try_parse() {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let msg = e.render().to_string();
            let msg = msg.strip_prefix("error: ").unwrap_or(&msg);
            let _ = write!(std::io::stderr(), "wrk: {msg}");
            return ExitCode::FAILURE;
        }
    };
    // NRVNA_FSYNC, NRVNA_MAX_PROMPT_SIZE, NRVNA_WAIT_POLL_MS: checked once.
    if let Err(e) = nrvna_core::config::init_from_env() {
        let _ = writeln!(std::io::stderr(), "wrk: {e}");
        return ExitCode::FAILURE;
    }
    match wrk::run(args) {
        Ok(code) => code,
        Err(e) if wrk::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "wrk: {e:#}");
            ExitCode::FAILURE
        }
    }
}
