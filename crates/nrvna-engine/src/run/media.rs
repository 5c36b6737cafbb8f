//! Images and audio through llama.cpp's multimodal library (mtmd): the
//! projector (`mmproj*.gguf`) loaded once beside the text model, and a
//! job's media turned into prompt chunks that either engine evaluates into
//! the job's own sequence. Encoding is serialised: one projector context is
//! shared by every worker and mtmd's encoder is not thread-safe.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::mtmd::{
    mtmd_default_marker, MtmdBitmap, MtmdContext, MtmdContextParams, MtmdInputChunks, MtmdInputText,
};

use crate::error::{EngineError, RunError};
pub use crate::job::Media;
use crate::job::{MediaInput, TextRequest};
use crate::llama::check_file;
use crate::plan::prompt::fit_media;

/// The loaded projector.
pub struct Projector {
    ctx: Mutex<MtmdContext>,
    pub vision: bool,
    pub audio: bool,
    /// Media positions are M-RoPE (Qwen2-VL and kin): a chunk takes fewer
    /// positions than KV cells.
    pub mrope: bool,
    /// The projector file's name (recorded in `.nrvnad.info`).
    pub path: std::path::PathBuf,
}

impl Projector {
    /// Loads `path` as a projector for `model`. Errors name the file and
    /// say what to check.
    pub fn load(path: &Path, model: &LlamaModel, threads: u32, use_gpu: bool) -> Result<Projector, EngineError> {
        check_file(path, "projector", "pass the mmproj .gguf that belongs to the model")?;
        let s = path
            .to_str()
            .ok_or_else(|| EngineError::ProjectorPath { path: path.to_owned() })?;
        let params = MtmdContextParams {
            use_gpu,
            print_timings: false,
            n_threads: threads.max(1) as i32,
            ..MtmdContextParams::default()
        };
        let ctx = MtmdContext::init_from_file(s, model, &params).map_err(|source| EngineError::ProjectorLoad {
            path: path.to_owned(),
            source,
        })?;
        Ok(Projector {
            vision: ctx.support_vision(),
            audio: ctx.support_audio(),
            mrope: ctx.decode_use_mrope(),
            ctx: Mutex::new(ctx),
            path: path.to_owned(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, MtmdContext> {
        self.ctx.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Builds a job's prompt chunks: `text` (rendered with the chat
    /// template) must hold one media marker per file; files it does not
    /// place are put before it. A file mtmd cannot decode is the job's fault.
    pub fn tokenize(&self, text: &str, media: &[Media], audio: bool) -> Result<MtmdInputChunks, RunError> {
        let kind = if audio { "audio" } else { "image" };
        if audio && !self.audio {
            return Err(RunError::Rejected(format!(
                "the projector {} has no audio encoder; start nrvnad with --mmproj FILE for a speech model (for example an Ultravox or Qwen2-Audio mmproj)",
                self.path.display()
            )));
        }
        if !audio && !self.vision {
            return Err(RunError::Rejected(format!(
                "the projector {} has no vision encoder; start nrvnad with --mmproj FILE for a vision model",
                self.path.display()
            )));
        }
        let ctx = self.lock();
        let mut bitmaps = Vec::with_capacity(media.len());
        for m in media {
            if m.bytes.is_empty() {
                return Err(RunError::Rejected(format!("{} is empty", m.name)));
            }
            let b = MtmdBitmap::from_buffer(&ctx, &m.bytes, false).map_err(|_| {
                RunError::Rejected(format!(
                    "{} could not be decoded as {kind} (corrupt, truncated or an unsupported format)",
                    m.name
                ))
            })?;
            if b.is_audio() != audio {
                return Err(RunError::Rejected(format!(
                    "{} is {} but this is {} job",
                    m.name,
                    if b.is_audio() { "audio" } else { "an image" },
                    if audio { "an audio" } else { "an image" }
                )));
            }
            bitmaps.push(b);
        }
        let refs: Vec<&MtmdBitmap> = bitmaps.iter().collect();
        let input = MtmdInputText {
            text: text.to_owned(),
            add_special: true,
            parse_special: true,
        };
        ctx.tokenize(input, &refs)
            .map_err(|e| RunError::Rejected(format!("preparing the {kind} prompt failed: {e}")))
    }

    /// Evaluates `chunks` into sequence `seq` of `lctx` from position
    /// `n_past` (text decoded, media encoded then decoded, in calls of at
    /// most `n_batch`), with logits for the last position. Returns the
    /// position after the prompt.
    pub fn eval(
        &self,
        chunks: &MtmdInputChunks,
        lctx: &mut LlamaContext<'_>,
        n_past: i32,
        seq: i32,
        n_batch: i32,
    ) -> Result<i32, RunError> {
        let mut ctx = self.lock();
        chunks
            .eval_chunks(&mut ctx, lctx, n_past, seq, n_batch, true)
            .map_err(|e| RunError::Rejected(format!("encoding the job's media failed ({e}); see the daemon log")))
    }
}

/// What a media job is, for the error that asks for a projector.
pub fn job_kind(media: &MediaInput) -> &'static str {
    if media.audio {
        "a speech-to-text job"
    } else {
        "a vision job"
    }
}

/// A media job's prompt: its chunks (text tokens, images or audio), the KV
/// cells they take, and the most new tokens that fit after them in `limit`.
pub fn plan_media(
    projector: &Projector,
    limit: u32,
    req: &TextRequest,
    media: &MediaInput,
) -> Result<(MtmdInputChunks, u32, u32), RunError> {
    let chunks = projector.tokenize(&req.prompt, &media.files, media.audio)?;
    let n = cells(&chunks);
    let max_gen = fit_media(n, limit, req.max_tokens)?;
    Ok((chunks, n, max_gen))
}

/// The KV cells a prompt's chunks take: their tokens, or their positions
/// where M-RoPE gives a chunk more positions than tokens.
pub fn cells(chunks: &MtmdInputChunks) -> u32 {
    chunks.total_tokens().max(chunks.total_positions().max(0) as usize) as u32
}

/// The marker that stands for one media file in a prompt.
pub fn marker() -> &'static str {
    mtmd_default_marker()
}

/// The user message of a media job: the prompt with one marker per file,
/// put in front where the prompt does not place them itself (as the C++
/// daemon does).
pub fn with_markers(prompt: &str, n: usize) -> String {
    let m = marker();
    if prompt.contains(m) {
        prompt.to_owned()
    } else {
        format!("{}{prompt}", m.repeat(n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_go_in_front_unless_the_prompt_places_them() {
        let m = marker();
        assert_eq!(with_markers("describe", 2), format!("{m}{m}describe"));
        let placed = format!("left {m} right");
        assert_eq!(with_markers(&placed, 1), placed);
        assert_eq!(with_markers("", 1), m);
    }
}
