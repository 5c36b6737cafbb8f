//! Text planning: a prompt checked against the context before a runner
//! creates or joins one, and the number of new tokens that still fit.

use llama_cpp_2::token::LlamaToken;

use crate::error::RunError;
use crate::llama::Weights;

/// Tokenizes a rendered prompt and checks it against a context of `limit`
/// cells; returns (prompt tokens, max new tokens).
pub fn plan_text(
    weights: &Weights,
    limit: u32,
    prompt: &str,
    max_tokens: u32,
) -> Result<(Vec<LlamaToken>, u32), RunError> {
    let toks = weights.tokenize(prompt);
    let n = toks.len() as u32;
    if n == 0 {
        return Err(RunError::Rejected("the prompt renders to zero tokens".into()));
    }
    if n >= limit {
        return Err(RunError::Rejected(format!(
            "the prompt is {n} tokens but the context holds {limit} (NRVNA_MAX_CTX, capped by the model); shorten the prompt or raise NRVNA_MAX_CTX"
        )));
    }
    Ok((toks, max_new(n, limit, max_tokens)))
}

/// A prompt of `n` cells (text and media) checked against `limit`; returns
/// the most new tokens. The error says to use fewer or smaller files.
pub fn fit_media(n: u32, limit: u32, max_tokens: u32) -> Result<u32, RunError> {
    if n >= limit {
        return Err(RunError::Rejected(format!(
            "the prompt with its media is {n} tokens but the context holds {limit} (NRVNA_MAX_CTX, capped by the model); use fewer or smaller files, or raise NRVNA_MAX_CTX"
        )));
    }
    Ok(max_new(n, limit, max_tokens))
}

/// `max_tokens` (at least 1), within the cells the prompt leaves.
fn max_new(n: u32, limit: u32, max_tokens: u32) -> u32 {
    max_tokens.max(1).min(limit - n)
}

/// A per-job context's size: the prompt and its new tokens in whole
/// 64-cell pages, at most `limit` rounded up the same way.
pub fn job_ctx(n_prompt: u32, max_gen: u32, limit: u32) -> u32 {
    let n_ctx = (n_prompt + max_gen).div_ceil(64) * 64;
    n_ctx.min(limit.div_ceil(64) * 64)
}
