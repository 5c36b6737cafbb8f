//! `nrvnad`: thin front end; everything lives in the library so tests can call it.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    passive_openmp();
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

/// llama.cpp's CPU threads are OpenMP threads. By default they spin between
/// parallel regions, and on a small machine (2 cores, shared with the
/// daemon's own threads) a spinning thread that holds a core while its
/// partner is descheduled turns a decode of a few milliseconds into tens or
/// hundreds: W16 took 315 s instead of 12 s here. Sleeping waiters cost a
/// wake-up instead. libgomp reads OMP_WAIT_POLICY when it is loaded, before
/// `main`, so the process re-executes itself once with it set. A value set
/// by the user is left alone.
fn passive_openmp() {
    if std::env::var_os("OMP_WAIT_POLICY").is_some() {
        return;
    }
    std::env::set_var("OMP_WAIT_POLICY", "passive");
    if let Ok(exe) = std::env::current_exe() {
        use std::os::unix::process::CommandExt;
        let err = std::process::Command::new(exe).args(std::env::args_os().skip(1)).exec();
        eprintln!("nrvnad: could not re-execute with OMP_WAIT_POLICY=passive ({err}); going on without it");
    }
}
