//! The `flw` binary: parse the command line, call [`flw::run`], turn its
//! result into an exit code (0 done, 1 failed/missing/error, 2 pending).

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = match flw::Args::try_parse() {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // A usage error is an error (1), never "still running" (2).
            let msg = e.render().to_string();
            let msg = msg.strip_prefix("error: ").unwrap_or(&msg);
            let _ = write!(std::io::stderr(), "flw: {msg}");
            return ExitCode::FAILURE;
        }
    };
    // NRVNA_FSYNC, NRVNA_MAX_PROMPT_SIZE, NRVNA_WAIT_POLL_MS: checked once.
    if let Err(e) = nrvna_core::config::init_from_env() {
        let _ = writeln!(std::io::stderr(), "flw: {e}");
        return ExitCode::FAILURE;
    }
    match flw::run(args) {
        Ok(code) => code,
        Err(e) if flw::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "flw: {e:#}");
            ExitCode::FAILURE
        }
    }
}
