//! The `flw` binary: [`flw::run`] behind the light tools' shared `main`
//! (exit 0 done, 1 failed/missing/error, 2 pending; a usage error is an
//! error, 1, never "still running").

fn main() -> std::process::ExitCode {
    nrvna_core::cli::tool_main::<flw::Args>("flw", flw::run)
}
