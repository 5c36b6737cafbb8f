//! `nrvna-bench`: runs the issue #3 benchmarks against the real release
//! binaries (`nrvnad`, `wrk`, `flw` next to this executable) and writes
//! `results.json` and `results.md`.

mod bench;
mod cli;
mod daemon;
mod jobs;
mod machine;
mod report;
mod scenario;
mod stats;
mod tools;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match bench::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nrvna-bench: {e:#}");
            ExitCode::from(1)
        }
    }
}
