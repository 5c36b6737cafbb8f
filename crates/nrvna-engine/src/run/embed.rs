//! Embeddings, for both engines: texts embedded together in one decode
//! call (one sequence each), text with images through the projector, the
//! pooling choice and L2 normalisation. Each embedding gets a context of
//! its own, so the batched engine's shared context is never touched.

use std::num::NonZeroU32;
use std::time::Instant;

use llama_cpp_2::context::params::{LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;

use crate::error::RunError;
use crate::job::{Media, Output};
use crate::llama::{new_context, Weights};
use crate::run::media::{cells, with_markers, Projector};

/// Why an embedding vector is unusable.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("the model produced a non-finite embedding value")]
    NonFinite,
    #[error("the model produced an all-zero embedding")]
    AllZero,
}

/// Mean pooling for decoder models (which declare no pooling), else the
/// model's own (`<arch>.pooling_type` in the GGUF metadata).
pub fn pooling_for(model: &llama_cpp_2::model::LlamaModel) -> LlamaPoolingType {
    let arch = model.meta_val_str("general.architecture").unwrap_or_default();
    match model
        .meta_val_str(&format!("{arch}.pooling_type"))
        .ok()
        .and_then(|v| v.parse::<i32>().ok())
    {
        Some(2) => LlamaPoolingType::Cls,
        Some(3) => LlamaPoolingType::Last,
        _ => LlamaPoolingType::Mean,
    }
}

/// L2-normalises a vector; `Err` when it holds a non-finite value or is all zeros.
pub fn normalize(v: &[f32]) -> Result<Vec<f32>, EmbedError> {
    if v.iter().any(|x| !x.is_finite()) {
        return Err(EmbedError::NonFinite);
    }
    let norm = v.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>().sqrt();
    if norm == 0.0 {
        return Err(EmbedError::AllZero);
    }
    Ok(v.iter().map(|x| (f64::from(*x) / norm) as f32).collect())
}

/// The most tokens one embedding context takes (capped by the model).
const EMBED_CTX: u32 = 8192;

/// Embeds text and images together in their own context (the images
/// encoded by the projector, the text after them attending to them).
/// Pooled over the last decode call of the prompt, as the C++ daemon does.
pub fn embed_media(
    weights: &Weights,
    proj: &Projector,
    threads: u32,
    text: &str,
    media: &[Media],
) -> Result<Output, RunError> {
    let start = Instant::now();
    let prompt = with_markers(text, media.len());
    let chunks = proj.tokenize(&prompt, media, false)?;
    let n = cells(&chunks);
    let limit = weights.cap_ctx(EMBED_CTX);
    if n > limit {
        return Err(RunError::Rejected(format!(
            "the text with its images is {n} tokens; embeddings take at most {limit}"
        )));
    }
    let n_ctx = n.div_ceil(64) * 64;
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx))
        .with_n_batch(n_ctx)
        .with_n_ubatch(n_ctx)
        .with_n_seq_max(1)
        .with_embeddings(true)
        .with_pooling_type(pooling_for(&weights.llama))
        .with_n_threads(threads as i32)
        .with_n_threads_batch(threads as i32);
    let mut ctx = new_context(&weights.llama, params)?;
    proj.eval(&chunks, &mut ctx, 0, 0, n_ctx as i32)?;
    let v = ctx
        .embeddings_seq_ith(0)
        .map_err(|e| RunError::Fault(format!("reading the embedding: {e}")))?;
    let v = normalize(v).map_err(|e| RunError::Rejected(e.to_string()))?;
    Ok(Output {
        embedding: Some(v),
        prompt_tokens: n,
        gen_secs: start.elapsed().as_secs_f64(),
        ..Output::default()
    })
}

/// Embeds one text in its own context.
pub fn embed_one(model: &Weights, threads: u32, text: &str) -> Result<Output, RunError> {
    embed_many(model, threads, &[text])
        .pop()
        .unwrap_or_else(|| Err(RunError::Fault("no embedding came back".into())))
}

/// Embeds several texts with one decode call (one sequence each): the way
/// the batched engine serves embedding jobs claimed together.
pub fn embed_many(model: &Weights, threads: u32, texts: &[&str]) -> Vec<Result<Output, RunError>> {
    let limit = model.cap_ctx(EMBED_CTX) as usize;
    let mut results: Vec<Option<Result<Output, RunError>>> = Vec::with_capacity(texts.len());
    let mut batchable: Vec<(usize, Vec<LlamaToken>)> = Vec::new();
    for (i, t) in texts.iter().enumerate() {
        let toks = model.tokenize_plain(t);
        if toks.is_empty() {
            results.push(Some(Err(RunError::Rejected(
                "the text to embed is empty after tokenization".into(),
            ))));
        } else if toks.len() > limit {
            results.push(Some(Err(RunError::Rejected(format!(
                "the text is {} tokens; embeddings take at most {limit}",
                toks.len()
            )))));
        } else {
            results.push(None);
            batchable.push((i, toks));
        }
    }
    // Group into decode calls that fit the embedding context.
    let start = Instant::now();
    let mut group: Vec<(usize, Vec<LlamaToken>)> = Vec::new();
    let mut groups = Vec::new();
    let mut total = 0;
    for item in batchable {
        if total + item.1.len() > limit && !group.is_empty() {
            groups.push(std::mem::take(&mut group));
            total = 0;
        }
        total += item.1.len();
        group.push(item);
    }
    if !group.is_empty() {
        groups.push(group);
    }
    for g in groups {
        for (i, r) in embed_group(model, threads, &g, start) {
            results[i] = Some(r);
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(RunError::Fault("embedding skipped".into()))))
        .collect()
}

fn embed_group(
    model: &Weights,
    threads: u32,
    group: &[(usize, Vec<LlamaToken>)],
    start: Instant,
) -> Vec<(usize, Result<Output, RunError>)> {
    let fail = |e: RunError| {
        let why = e.to_string();
        group
            .iter()
            .map(|(i, _)| {
                let err = match &e {
                    RunError::Rejected(_) => RunError::Rejected(why.clone()),
                    _ => RunError::Fault(why.clone()),
                };
                (*i, Err(err))
            })
            .collect()
    };
    let n: usize = group.iter().map(|(_, t)| t.len()).sum();
    // llama.cpp reserves the pooling graph with n_ubatch split evenly across
    // the sequences; a size that is not a multiple of their count trips an
    // assertion, so round to a multiple of it.
    let k = group.len() as u32;
    let n_ctx = ((n as u32).div_ceil(64) * 64).div_ceil(k) * k;
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(n_ctx))
        .with_n_batch(n_ctx)
        .with_n_ubatch(n_ctx)
        .with_n_seq_max(group.len() as u32)
        .with_kv_unified(true)
        .with_embeddings(true)
        .with_pooling_type(pooling_for(&model.llama))
        .with_n_threads(threads as i32)
        .with_n_threads_batch(threads as i32);
    let mut ctx = match new_context(&model.llama, params) {
        Ok(c) => c,
        Err(e) => return fail(e.into()),
    };
    let mut batch = LlamaBatch::new(n, group.len() as i32);
    for (seq, (_, toks)) in group.iter().enumerate() {
        // Pooling reads every token's output.
        if let Err(e) = batch.add_sequence(toks, seq as i32, true) {
            return fail(RunError::Fault(e.to_string()));
        }
    }
    if let Err(e) = ctx.decode(&mut batch) {
        return fail(RunError::from_decode(e, group.len() == 1, "decoding for embedding"));
    }
    group
        .iter()
        .enumerate()
        .map(|(seq, (i, toks))| {
            let r = ctx
                .embeddings_seq_ith(seq as i32)
                .map_err(|e| RunError::Fault(format!("reading the embedding: {e}")))
                .and_then(|v| normalize(v).map_err(|e| RunError::Rejected(e.to_string())))
                .map(|v| Output {
                    embedding: Some(v),
                    prompt_tokens: toks.len() as u32,
                    gen_secs: start.elapsed().as_secs_f64(),
                    ..Output::default()
                });
            (*i, r)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn normalize_gives_unit_length_and_refuses_nan() {
        let v = super::normalize(&[3.0, 4.0]).unwrap();
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
        assert!(super::normalize(&[f32::NAN, 1.0]).is_err());
        assert!(super::normalize(&[0.0, 0.0]).is_err());
    }
}
