//! `nrvnad`: thin front end; everything lives in the library so tests can call it.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = nrvnad::cli::Cli::parse();
    nrvnad::logging::init();
    match nrvnad::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nrvnad: {e:#}");
            ExitCode::from(1)
        }
    }
}
