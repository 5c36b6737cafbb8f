//! nrvnad, the nrvna daemon. The tree mirrors the design: the [`server`]
//! owns the workspace and the threads, the [`scanner`] finds jobs, the
//! [`pool`] queues them for `Worker-N` threads, the [`processor`] claims and
//! finishes them, and the engine's Runners do inference.

pub mod cli;
pub mod control;
pub mod engine;
pub mod logging;
pub mod observer;
pub mod pool;
pub mod processor;
pub mod recovery;
pub mod scanner;
pub mod schema;
pub mod server;
pub mod signals;

use std::process::ExitCode;

use cli::{Cli, Command};

/// Runs the command line (callable from tests).
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Some(Command::Status { workspace, json }) => control::status(&workspace, json),
        Some(Command::Stop { workspace, timeout }) => control::stop(&workspace, timeout),
        None => server::serve(cli.serve),
    }
}
