//! The bottom layer: llama.cpp plumbing that every other part uses. The
//! process-wide backend, the one lock around context creation, context
//! parameters for a single sequence, file checks before llama.cpp opens a
//! file, and llama.cpp's log lines captured for error reports.

mod capture;
mod weights;

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::LlamaModel;

use crate::error::EngineError;

pub use weights::Weights;

static BACKEND: OnceLock<Result<LlamaBackend, llama_cpp_2::LlamaCppError>> = OnceLock::new();

/// The process-wide llama.cpp backend (initialised once; llama.cpp's logs
/// are routed into `tracing`).
pub fn backend() -> Result<&'static LlamaBackend, EngineError> {
    let backend = BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            #[cfg(feature = "portable")]
            portable::load_cpu_variants();
            LlamaBackend::init()
        })
        .as_ref()
        .map_err(EngineError::backend)?;
    #[cfg(feature = "portable")]
    portable::check_loaded()?;
    Ok(backend)
}

/// The portable build (feature `portable`): llama.cpp's CPU backend is one
/// shared library per instruction-set level (`libggml-cpu-haswell.so`,
/// `-skylakex`, `-sapphirerapids`, ...), and ggml loads the best one this CPU
/// runs. They are looked for beside the executable (a packaged build:
/// scripts/portable.sh puts them there), then where the build left them.
#[cfg(feature = "portable")]
mod portable {
    use std::path::{Path, PathBuf};
    use std::sync::OnceLock;

    use crate::error::EngineError;

    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();

    fn holds_variants(dir: &Path) -> bool {
        std::fs::read_dir(dir).is_ok_and(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("libggml-cpu"))
        })
    }

    pub(super) fn load_cpu_variants() {
        let beside = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(Path::to_path_buf));
        let built = llama_cpp_sys_2::BACKENDS_DIR.map(PathBuf::from);
        let dir = [beside, built].into_iter().flatten().find(|d| holds_variants(d));
        if let Some(d) = &dir {
            llama_cpp_2::llama_backend::load_backends_from_path(d);
        }
        let _ = FOUND.set(dir);
    }

    /// An error when no CPU variant could be loaded; otherwise logs (once)
    /// which instruction sets the loaded one uses.
    pub(super) fn check_loaded() -> Result<(), EngineError> {
        static LOGGED: OnceLock<()> = OnceLock::new();
        let cpu = llama_cpp_2::list_llama_ggml_backend_devices()
            .into_iter()
            .any(|d| d.backend.eq_ignore_ascii_case("cpu"));
        if !cpu {
            let looked = match FOUND.get().and_then(Option::as_ref) {
                Some(d) => format!("the variants in {} did not load on this CPU", d.display()),
                None => "no libggml-cpu-*.so was found beside the executable".to_owned(),
            };
            return Err(EngineError::Backend {
                reason: format!(
                    "this is the portable build, and {looked}: keep the libggml*.so files of the \
                 release next to nrvnad (scripts/portable.sh packages them together)"
                ),
            });
        }
        LOGGED.get_or_init(|| {
            // SAFETY: llama.cpp returns a pointer to a static, NUL-terminated string.
            let info = unsafe { std::ffi::CStr::from_ptr(llama_cpp_sys_2::llama_print_system_info()) };
            tracing::info!("llama.cpp CPU backend: {}", info.to_string_lossy().trim());
        });
        Ok(())
    }
}

/// Serialises context creation (llama.cpp may adjust model fields there).
static CONTEXT_LOCK: Mutex<()> = Mutex::new(());

/// A context on `llama` for a job or the batched engine; failures say to
/// lower NRVNA_MAX_CTX.
pub fn new_context(llama: &LlamaModel, params: LlamaContextParams) -> Result<LlamaContext<'_>, EngineError> {
    new_context_for(
        llama,
        params,
        "a llama.cpp context".into(),
        " (lower NRVNA_MAX_CTX if memory is short)",
    )
}

/// A context on `llama`, created under the context lock; errors name
/// `what` it is for and end with `hint`.
pub fn new_context_for<'m>(
    llama: &'m LlamaModel,
    params: LlamaContextParams,
    what: String,
    hint: &'static str,
) -> Result<LlamaContext<'m>, EngineError> {
    let backend = backend()?;
    let _g = CONTEXT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    llama
        .new_context(backend, params)
        .map_err(|source| EngineError::Context { what, source, hint })
}

/// A context of `n_ctx` cells for one sequence, decoding at most `n_batch`
/// tokens per call (fewer when the context is smaller), with llama.cpp's
/// flash-attention `policy`; returns the parameters and the batch size.
pub fn single_sequence(n_ctx: u32, n_batch: u32, policy: i32, threads: u32) -> (LlamaContextParams, u32) {
    let n_batch = n_batch.min(n_ctx).max(1);
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx))
        .with_n_batch(n_batch)
        .with_n_ubatch(n_batch)
        .with_n_seq_max(1)
        .with_flash_attention_policy(policy)
        .with_n_threads(threads as i32)
        .with_n_threads_batch(threads as i32);
    (params, n_batch)
}

/// Checks that `path` is a regular file before llama.cpp opens it; the
/// errors name `what` and the file, and add `hint`.
pub fn check_file(path: &Path, what: &'static str, hint: &'static str) -> Result<(), EngineError> {
    let meta = std::fs::metadata(path).map_err(|source| EngineError::Unreadable {
        what,
        path: path.to_owned(),
        source,
        hint,
    })?;
    if !meta.is_file() {
        return Err(EngineError::NotAFile {
            what,
            path: path.to_owned(),
            hint,
        });
    }
    Ok(())
}

/// Whether this CPU has AMX tiles (the `amx_tile` flag of /proc/cpuinfo).
pub fn cpu_has_amx() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| {
            s.lines()
                .find(|l| l.starts_with("flags"))
                .is_some_and(|l| l.split_whitespace().any(|f| f == "amx_tile"))
        })
        .unwrap_or(false)
}

/// Runs `f` with llama.cpp's log lines of warning level and above captured
/// (on this thread) instead of logged, and returns them with the result.
/// Used to report llama.cpp's own reason for rejecting a grammar.
pub fn with_captured_llama_errors<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
    let capture = capture::Capture::default();
    let lines = capture.lines.clone();
    let out = tracing::subscriber::with_default(capture, f);
    let lines = lines.lock().map(|l| l.clone()).unwrap_or_default();
    (out, lines)
}
