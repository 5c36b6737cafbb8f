//! `nrvnad`: thin front end; everything lives in the library so tests can call it.

use std::process::ExitCode;

fn main() -> ExitCode {
    nrvnad::cli::prepare_process_env();
    let cli = nrvnad::cli::parse();
    nrvnad::logging::init(&cli.serve.log_level);
    match nrvnad::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("nrvnad: {e:#}");
            ExitCode::from(1)
        }
    }
}
