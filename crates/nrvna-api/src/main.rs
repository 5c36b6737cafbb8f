//! `nrvna-api WS`: parse the flags, set up logging to stderr, run.

use std::process::ExitCode;

use clap::Parser;
use nrvna_api::Args;

fn main() -> ExitCode {
    let cfg = match Args::parse().into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nrvna-api: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("nrvna-api: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(nrvna_api::run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nrvna-api: {e:#}");
            ExitCode::FAILURE
        }
    }
}
