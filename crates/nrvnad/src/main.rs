//! `nrvnad`: thin front end; everything lives in the library so tests can call it.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // On a failed assertion ggml attaches gdb to print a backtrace, which can
    // hang the process for a long time; a daemon should die promptly instead.
    if std::env::var_os("GGML_NO_BACKTRACE").is_none() {
        std::env::set_var("GGML_NO_BACKTRACE", "1");
    }
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
