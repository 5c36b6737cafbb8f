//! nrvnad, the nrvna daemon. The tree mirrors the design: the [`server`]
//! owns the workspace and the threads, the [`scanner`] finds jobs, the
//! [`pool`] queues them for the [`worker`] threads (`Worker-N`), the
//! [`processor`] claims, reads, plans, runs and finishes them, and the
//! [`engine`]'s Runners do inference. [`config`] is built once from the
//! command line and the environment ([`cli`]).

pub mod cli;
pub mod config;
pub mod control;
pub mod engine;
pub mod events;
pub mod lease;
pub mod logging;
pub mod membership;
pub mod metrics;
pub mod models;
pub mod modelsched;
pub mod observer;
pub mod pool;
pub mod processor;
pub mod publish;
pub mod recovery;
pub mod retention;
pub mod scanner;
pub mod server;
pub mod signals;
pub mod space;
pub mod worker;

use std::process::ExitCode;

use cli::{Cli, Command};

/// Runs the command line (callable from tests).
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Some(Command::Status { workspace, json, local }) => control::status(&workspace, json, local),
        Some(Command::Stop {
            workspace,
            timeout,
            all,
        }) => control::stop(&workspace, timeout, all),
        Some(Command::ExplainGrammar { model }) => engine::explain_grammar_main(&model),
        None => server::serve(config::Config::from_args(&cli.serve)?),
    }
}
