//! The `wrk` binary: [`wrk::run`] behind the light tools' shared `main`
//! (exit 0 published, 1 anything else).

fn main() -> std::process::ExitCode {
    nrvna_core::cli::tool_main::<wrk::Args>("wrk", wrk::run)
}
