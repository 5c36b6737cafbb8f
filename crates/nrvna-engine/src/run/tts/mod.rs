//! Text to speech as OuteTTS does it on llama.cpp: the daemon's model (an
//! OuteTTS GGUF) turns words into WavTokenizer audio codes, the vocoder
//! (a WavTokenizer decoder GGUF, llama.cpp's `wavtokenizer-dec`) turns the
//! codes into a spectrum, and an inverse STFT gives 24 kHz samples.
//!
//! Generation follows the OuteTTS layout word by word, and the layout is
//! enforced rather than hoped for: each word's text is fed as given, the
//! model picks the word's duration among the `<|t_…|>` tokens and then
//! its codes among the `<|N|>` tokens until it closes the word. Every
//! word of the text is voiced exactly once, a drifting model cannot emit
//! text where codes belong, and a word's codes are bounded by its
//! duration. A text longer than the context holds is voiced in parts,
//! each with the speaker prompt in front.

pub mod audio;
pub mod text;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use llama_cpp_2::context::params::{LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

use crate::error::{EngineError, RunError};
pub use crate::job::SpeechRequest;
use crate::job::{Finish, Observer, Output};
use crate::llama::{backend, check_file, new_context, new_context_for, single_sequence, Weights};
use crate::plan::config::EngineConfig;
use audio::{Istft, SAMPLE_RATE};
use text::{Speaker, Version};

/// The top-k of llama.cpp's tts example and the C++ nrvna.
pub const DEFAULT_TOP_K: u32 = 4;
/// Sampling temperature for speech when the job names none (the
/// distribution as the model gives it, as llama.cpp's tts example samples).
pub const DEFAULT_TEMP: f32 = 1.0;

/// The longest a single word may sound, in seconds.
const MAX_WORD_SECS: f32 = 3.0;
/// Codes the vocoder turns into sound in one pass (20 s at 75 codes/s):
/// its attention is quadratic in the codes of a pass.
const VOCODE_SEGMENT: usize = 1500;

/// The vocoder: a WavTokenizer decoder.
pub struct Vocoder {
    llama: LlamaModel,
    pub path: PathBuf,
    /// The codebook's size: codes 0..n_codes.
    pub n_codes: u32,
    istft: Istft,
}

impl Vocoder {
    pub fn load(path: &Path) -> Result<Vocoder, EngineError> {
        check_file(path, "vocoder", "give --vocoder the path of a WavTokenizer .gguf")?;
        // The vocoder is small and runs once per job: the CPU is enough,
        // and the C++ daemon keeps it there too.
        let params = LlamaModelParams::default().with_n_gpu_layers(0);
        let llama =
            LlamaModel::load_from_file(backend()?, path, &params).map_err(|source| EngineError::VocoderLoad {
                path: path.to_owned(),
                source,
            })?;
        let arch = llama.meta_val_str("general.architecture").unwrap_or_default();
        if arch != "wavtokenizer-dec" {
            return Err(EngineError::NotAVocoder {
                path: path.to_owned(),
                arch,
            });
        }
        let n_codes = u32::try_from(llama.n_vocab()).unwrap_or(0);
        if n_codes == 0 {
            return Err(EngineError::NoCodebook { path: path.to_owned() });
        }
        let n_out = llama.n_embd_out().max(0) as usize;
        let istft = Istft::for_output_width(n_out).ok_or_else(|| EngineError::VocoderWidth {
            path: path.to_owned(),
            n_out,
        })?;
        Ok(Vocoder {
            llama,
            path: path.to_owned(),
            n_codes,
            istft,
        })
    }

    /// Audio codes per second of sound.
    pub fn codes_per_sec(&self) -> f32 {
        SAMPLE_RATE as f32 / self.istft.hop() as f32
    }

    /// The waveform of `codes`, `hop` samples per code.
    pub fn samples(&self, codes: &[u32], threads: u32) -> Result<Vec<f32>, RunError> {
        let mut out = Vec::with_capacity(codes.len() * self.istft.hop());
        for seg in codes.chunks(VOCODE_SEGMENT) {
            let frames = self.frames(seg, threads)?;
            out.extend(self.istft.samples(&frames));
        }
        Ok(out)
    }

    /// One vocoder pass: a spectrum frame per code.
    fn frames(&self, codes: &[u32], threads: u32) -> Result<Vec<Vec<f32>>, RunError> {
        let n = codes.len() as u32;
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(n.max(1)))
            .with_n_batch(n)
            .with_n_ubatch(n)
            .with_n_seq_max(1)
            .with_embeddings(true)
            .with_pooling_type(LlamaPoolingType::None)
            .with_n_threads(threads as i32)
            .with_n_threads_batch(threads as i32);
        let mut ctx = new_context_for(&self.llama, params, format!("the vocoder's context for {n} codes"), "")?;
        let mut batch = LlamaBatch::new(codes.len(), 1);
        for (i, c) in codes.iter().enumerate() {
            batch
                .add(LlamaToken(*c as i32), i as i32, &[0], true)
                .map_err(|e| RunError::Fault(e.to_string()))?;
        }
        ctx.encode(&mut batch)
            .map_err(|e| RunError::Fault(format!("the vocoder failed on {n} codes: {e}")))?;
        (0..codes.len())
            .map(|i| {
                ctx.embeddings_ith(i as i32)
                    .map(<[f32]>::to_vec)
                    .map_err(|e| RunError::Fault(format!("reading the vocoder's output: {e}")))
            })
            .collect()
    }
}

/// The OuteTTS tokens of a model's vocabulary.
pub struct Layout {
    pub version: Version,
    /// Audio code of each code token.
    code_of: HashMap<LlamaToken, u32>,
    /// The code tokens, for sampling.
    code_tokens: Vec<LlamaToken>,
    /// Duration tokens and their seconds.
    durations: Vec<(LlamaToken, f32)>,
    open: Option<LlamaToken>,
    close: LlamaToken,
    newline: Vec<LlamaToken>,
}

impl Layout {
    /// Reads the OuteTTS tokens from `model`'s vocabulary; codes at or
    /// above `n_codes` (the vocoder's codebook) are left out.
    pub fn read(model: &LlamaModel, name: &str, n_codes: u32) -> Result<Layout, EngineError> {
        let vocab = model.vocab();
        let single = |s: &str| -> Option<LlamaToken> {
            match vocab.tokenize(s.as_bytes(), false, true).as_slice() {
                [t] => Some(*t),
                _ => None,
            }
        };
        let needed = ["<|im_start|>", "<|text_start|>", "<|text_end|>", "<|audio_start|>"];
        let missing: Vec<&str> = needed.iter().copied().filter(|s| single(s).is_none()).collect();
        if !missing.is_empty() {
            return Err(EngineError::NotOuteTts {
                model: name.to_owned(),
                missing: missing.join(", "),
            });
        }
        let version = if single("<|space|>").is_some() {
            Version::V03
        } else {
            Version::V02
        };
        let mut code_of = HashMap::new();
        let mut durations = Vec::new();
        for (tok, bytes) in model.tokens(true) {
            let Ok(s) = std::str::from_utf8(&bytes) else { continue };
            let Some(inner) = s.strip_prefix("<|").and_then(|s| s.strip_suffix("|>")) else {
                continue;
            };
            if let Some(secs) = inner.strip_prefix("t_").and_then(|t| t.parse::<f32>().ok()) {
                durations.push((tok, secs));
            } else if !inner.is_empty() && inner.bytes().all(|b| b.is_ascii_digit()) {
                if let Ok(c) = inner.parse::<u32>() {
                    if c < n_codes {
                        code_of.insert(tok, c);
                    }
                }
            }
        }
        if code_of.is_empty() || durations.is_empty() {
            return Err(EngineError::NoAudioTokens { model: name.to_owned() });
        }
        let close_s = version.code_close();
        let no_token = |token| EngineError::MissingToken {
            model: name.to_owned(),
            token,
        };
        let close = single(close_s).ok_or_else(|| no_token(close_s))?;
        let open = match version.code_open() {
            Some(s) => Some(single(s).ok_or_else(|| no_token(s))?),
            None => None,
        };
        let mut code_tokens: Vec<LlamaToken> = code_of.keys().copied().collect();
        code_tokens.sort();
        Ok(Layout {
            version,
            code_of,
            code_tokens,
            durations,
            open,
            close,
            newline: vocab.tokenize(b"\n", false, false),
        })
    }

    /// Audio codes the vocabulary has tokens for.
    pub fn n_codes(&self) -> usize {
        self.code_of.len()
    }
}

/// What a daemon needs for speech jobs, loaded once.
pub struct Speech {
    pub layout: Layout,
    pub vocoder: Vocoder,
    pub speaker: Speaker,
    /// Where the voice came from ("built-in en_male_1" or a file).
    pub speaker_source: String,
}

impl Speech {
    /// Loads the vocoder, reads the model's OuteTTS tokens and the voice.
    pub fn load(model: &LlamaModel, name: &str, vocoder: &Path, speaker: Option<&Path>) -> Result<Speech, EngineError> {
        let vocoder = Vocoder::load(vocoder)?;
        let layout = Layout::read(model, name, vocoder.n_codes)?;
        let (speaker, speaker_source) = match speaker {
            Some(p) => (load_speaker(p)?, p.display().to_string()),
            None => (Speaker::default_voice(), "built-in en_male_1".to_owned()),
        };
        if speaker.max_code() >= vocoder.n_codes {
            return Err(EngineError::VoiceCodebook {
                voice: speaker_source,
                max_code: speaker.max_code(),
                n_codes: vocoder.n_codes,
            });
        }
        Ok(Speech {
            layout,
            vocoder,
            speaker,
            speaker_source,
        })
    }
}

/// Reads an OuteTTS speaker profile (JSON) from `path`.
fn load_speaker(path: &Path) -> Result<Speaker, EngineError> {
    let json = std::fs::read_to_string(path).map_err(|source| EngineError::SpeakerFile {
        path: path.to_owned(),
        source,
    })?;
    Speaker::parse(&json).map_err(|source| EngineError::Speaker {
        path: path.to_owned(),
        source,
    })
}

/// Picks tokens among an allowed set: top-k, temperature, a seeded draw.
struct Picker {
    state: u64,
    temp: f32,
    top_k: usize,
    cands: Vec<(LlamaToken, f32)>,
}

impl Picker {
    fn new(seed: u32, temp: f32, top_k: u32) -> Picker {
        Picker {
            state: u64::from(seed) ^ 0x9E37_79B9_7F4A_7C15,
            temp,
            top_k: top_k.max(1) as usize,
            cands: Vec::new(),
        }
    }

    /// A uniform draw in [0, 1) (splitmix64).
    fn uniform(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    fn pick(&mut self, logits: &[f32], allowed: impl Iterator<Item = LlamaToken>) -> Option<LlamaToken> {
        self.cands.clear();
        self.cands.extend(
            allowed
                .filter_map(|t| logits.get(t.0 as usize).map(|&l| (t, l)))
                .filter(|(_, l)| l.is_finite()),
        );
        let by_logit = |a: &(LlamaToken, f32), b: &(LlamaToken, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if self.cands.len() > self.top_k {
            self.cands.select_nth_unstable_by(self.top_k - 1, by_logit);
            self.cands.truncate(self.top_k);
        }
        self.cands.sort_by(by_logit);
        let best = *self.cands.first()?;
        if self.temp <= 0.0 || self.cands.len() == 1 {
            return Some(best.0);
        }
        let weights: Vec<f64> = self
            .cands
            .iter()
            .map(|(_, l)| f64::from((l - best.1) / self.temp).exp())
            .collect();
        let mut r = self.uniform() * weights.iter().sum::<f64>();
        for (c, w) in self.cands.iter().zip(&weights) {
            if r < *w {
                return Some(c.0);
            }
            r -= w;
        }
        Some(best.0)
    }
}

/// A single sequence being fed and sampled.
struct Seq<'a> {
    ctx: LlamaContext<'a>,
    batch: LlamaBatch<'static>,
    n_batch: usize,
    n_past: i32,
}

impl Seq<'_> {
    /// Feeds tokens; the logits of the last one are kept.
    fn feed(&mut self, toks: &[LlamaToken]) -> Result<(), RunError> {
        for (ci, chunk) in toks.chunks(self.n_batch).enumerate() {
            self.batch.clear();
            let last_chunk = (ci + 1) * self.n_batch >= toks.len();
            for (i, t) in chunk.iter().enumerate() {
                let want = last_chunk && i + 1 == chunk.len();
                self.batch
                    .add(*t, self.n_past + i as i32, &[0], want)
                    .map_err(|e| RunError::Fault(e.to_string()))?;
            }
            self.ctx
                .decode(&mut self.batch)
                .map_err(|e| RunError::from_decode(e, true, "voicing the text"))?;
            self.n_past += chunk.len() as i32;
        }
        Ok(())
    }

    fn logits(&self) -> &[f32] {
        self.ctx.get_logits_ith(self.batch.n_tokens() - 1)
    }
}

/// Voices `req.text` with the model's OuteTTS layout and the vocoder.
pub fn speak(
    weights: &Weights,
    speech: &Speech,
    cfg: &EngineConfig,
    threads: u32,
    req: SpeechRequest,
    obs: Arc<dyn Observer>,
) -> Result<Output, RunError> {
    let words = text::words(&req.text, speech.layout.version);
    if words.is_empty() {
        return Err(RunError::Rejected(
            "the text has nothing to say: no letters or numbers are left after normalising it".into(),
        ));
    }
    let mut v = Voicing::new(weights, speech, cfg, threads, words, &req)?;
    let start = Instant::now();
    v.voice_all(&*obs)?;
    let gen_secs = start.elapsed().as_secs_f64();
    if let Some(reason) = obs.should_stop() {
        return Err(v.stopped(reason));
    }
    let Voicing {
        words,
        spoken,
        codes,
        generated,
        prompt_tokens,
        ..
    } = v;
    let samples = vocode(&speech.vocoder, &codes, threads, cfg.tts_mute_ms)?;
    tracing::debug!(
        "voiced {} words as {} codes ({:.2} s of audio) in {:.2} s",
        spoken.len(),
        codes.len(),
        samples.len() as f64 / f64::from(SAMPLE_RATE),
        start.elapsed().as_secs_f64()
    );
    Ok(Output {
        text: said(&words, &spoken),
        audio: Some(samples),
        prompt_tokens,
        generated_tokens: generated,
        gen_secs,
        finish: Some(Finish::Eog),
        ..Output::default()
    })
}

/// The waveform of `codes`, its first `mute_ms` silenced: they are the
/// vocoder's onset artefact (llama.cpp's tts example and the C++ daemon
/// do the same).
fn vocode(vocoder: &Vocoder, codes: &[u32], threads: u32, mute_ms: u32) -> Result<Vec<f32>, RunError> {
    let mut samples = vocoder.samples(codes, threads)?;
    let mute = (SAMPLE_RATE as usize * mute_ms as usize / 1000).min(samples.len());
    samples[..mute].fill(0.0);
    Ok(samples)
}

/// The words voiced so far, as the job's text.
fn said(words: &[String], spoken: &[usize]) -> String {
    spoken.iter().map(|&i| words[i].as_str()).collect::<Vec<_>>().join(" ")
}

/// A speech job in progress: its words, the context they are voiced in,
/// and the codes and words done so far.
struct Voicing<'a> {
    llama: &'a LlamaModel,
    layout: &'a Layout,
    speaker: &'a Speaker,
    words: Vec<String>,
    word_toks: Vec<Vec<LlamaToken>>,
    /// The prompt that lists every word, tokenised while sizing the
    /// context; the first part takes it.
    full_prompt: Option<Vec<LlamaToken>>,
    per_sec: f32,
    max_word_codes: usize,
    /// The context's cells.
    limit: usize,
    seq: Seq<'a>,
    picker: Picker,
    codes: Vec<u32>,
    /// Indices of the words voiced.
    spoken: Vec<usize>,
    generated: u32,
    /// The first part's prompt tokens.
    prompt_tokens: u32,
}

impl<'a> Voicing<'a> {
    /// Tokenises the words and creates a context for what the whole text
    /// may need, within NRVNA_MAX_CTX.
    fn new(
        weights: &'a Weights,
        speech: &'a Speech,
        cfg: &EngineConfig,
        threads: u32,
        words: Vec<String>,
        req: &SpeechRequest,
    ) -> Result<Voicing<'a>, RunError> {
        let llama = &weights.llama;
        let layout = &speech.layout;
        let word_toks: Vec<Vec<LlamaToken>> = words.iter().map(|w| tokens_of(llama, w)).collect();
        let per_sec = speech.vocoder.codes_per_sec();
        let max_word_codes = (MAX_WORD_SECS * per_sec).ceil() as usize;
        let full_prompt = tokens_of(llama, &text::prompt(layout.version, &speech.speaker, &words));
        let need = full_prompt.len()
            + word_toks
                .iter()
                .map(|t| word_room(t, layout, max_word_codes))
                .sum::<usize>();
        let limit = need.next_multiple_of(256).min(weights.cap_ctx(cfg.max_ctx) as usize);
        let (params, n_batch) = single_sequence(limit as u32, cfg.n_batch, cfg.flash_attn.policy(), threads);
        let seq = Seq {
            ctx: new_context(llama, params)?,
            batch: LlamaBatch::new(n_batch as usize, 1),
            n_batch: n_batch as usize,
            n_past: 0,
        };
        Ok(Voicing {
            llama,
            layout,
            speaker: &speech.speaker,
            words,
            word_toks,
            full_prompt: Some(full_prompt),
            per_sec,
            max_word_codes,
            limit,
            seq,
            picker: Picker::new(req.seed, req.temp, req.top_k),
            codes: Vec::new(),
            spoken: Vec::new(),
            generated: 0,
            prompt_tokens: 0,
        })
    }

    /// The cells word `i` may take (see [`word_room`]).
    fn room(&self, i: usize) -> usize {
        word_room(&self.word_toks[i], self.layout, self.max_word_codes)
    }

    /// The job's failure when its observer stops it.
    fn stopped(&self, reason: String) -> RunError {
        RunError::Stopped {
            reason,
            partial: said(&self.words, &self.spoken),
            generated_tokens: self.generated,
        }
    }

    /// Voices every word, in as many parts as the context needs.
    fn voice_all(&mut self, obs: &dyn Observer) -> Result<(), RunError> {
        let mut next = 0;
        while next < self.words.len() {
            next = self.voice_part(next, obs)?;
        }
        Ok(())
    }

    /// Voices words from `next` on after a fresh speaker prompt, as many
    /// as the context holds; returns the first word left.
    fn voice_part(&mut self, first: usize, obs: &dyn Observer) -> Result<usize, RunError> {
        let (prompt, listed) = self.part_prompt(first)?;
        if self.prompt_tokens == 0 {
            self.prompt_tokens = prompt.len() as u32;
        } else {
            tracing::debug!(
                "voicing words {}.. of {} in a new part (the context holds {})",
                first + 1,
                self.words.len(),
                self.limit
            );
        }
        self.seq.ctx.clear_kv_cache();
        self.seq.n_past = 0;
        self.seq.feed(&prompt)?;
        let mut in_part = 0;
        for i in first..first + listed {
            if in_part > 0 && self.seq.n_past as usize + self.room(i) > self.limit {
                return Ok(i);
            }
            if !self.word_toks[i].is_empty() {
                self.voice_word(i, obs)?;
                in_part += 1;
            }
        }
        Ok(first + listed)
    }

    /// The prompt of a part that starts at word `next`, and how many words
    /// it lists: all that are left, fewer when the list itself would crowd
    /// out the voicing.
    fn part_prompt(&mut self, next: usize) -> Result<(Vec<LlamaToken>, usize), RunError> {
        let mut listed = self.words.len() - next;
        let prompt = loop {
            // The first part lists every word: that prompt is tokenised already.
            let p = match self.full_prompt.take() {
                Some(p) => p,
                None => {
                    let text = text::prompt(self.layout.version, self.speaker, &self.words[next..next + listed]);
                    tokens_of(self.llama, &text)
                }
            };
            if p.len() + self.room(next) <= self.limit || listed == 1 {
                break p;
            }
            listed = listed.div_ceil(2);
        };
        if prompt.len() + self.room(next) > self.limit {
            return Err(RunError::Rejected(format!(
                "the voice prompt takes {} tokens and a word up to {} more, but the context holds {} (NRVNA_MAX_CTX, capped by the model); raise NRVNA_MAX_CTX",
                prompt.len(),
                self.room(next),
                self.limit
            )));
        }
        Ok((prompt, listed))
    }

    /// Voices word `i`: its text, the duration the model picks, then its codes.
    fn voice_word(&mut self, i: usize, obs: &dyn Observer) -> Result<(), RunError> {
        let layout = self.layout;
        self.seq.feed(&self.word_toks[i])?;
        let dur = self
            .picker
            .pick(self.seq.logits(), layout.durations.iter().map(|d| d.0))
            .ok_or_else(|| RunError::Fault("no duration token had a finite logit".into()))?;
        let secs = layout.durations.iter().find(|d| d.0 == dur).map_or(0.0, |d| d.1);
        let mut head = vec![dur];
        head.extend(layout.open);
        self.seq.feed(&head)?;
        self.generated += 1;
        let cap = ((secs * self.per_sec * 2.0).ceil() as usize + 10).min(self.max_word_codes);
        self.word_codes(cap, obs)?;
        self.spoken.push(i);
        obs.on_text(&format!("{} ", self.words[i]), self.generated);
        Ok(())
    }

    /// A word's codes, until the model closes the word or `cap` codes
    /// (its duration's worth) are out.
    fn word_codes(&mut self, cap: usize, obs: &dyn Observer) -> Result<(), RunError> {
        let layout = self.layout;
        for n in 0.. {
            if let Some(reason) = obs.should_stop() {
                return Err(self.stopped(reason));
            }
            let tok = if n >= cap {
                layout.close
            } else {
                let close = (n > 0).then_some(layout.close);
                self.picker
                    .pick(self.seq.logits(), layout.code_tokens.iter().copied().chain(close))
                    .ok_or_else(|| RunError::Fault("no audio-code token had a finite logit".into()))?
            };
            self.generated += 1;
            if tok == layout.close {
                let mut tail = vec![tok];
                tail.extend_from_slice(&layout.newline);
                return self.seq.feed(&tail);
            }
            self.codes.push(layout.code_of[&tok]);
            self.seq.feed(&[tok])?;
        }
        Ok(())
    }
}

/// The cells a word may take: its text, duration, open and close, codes,
/// newline.
fn word_room(toks: &[LlamaToken], layout: &Layout, max_word_codes: usize) -> usize {
    toks.len() + 3 + layout.newline.len() + max_word_codes
}

/// `s` as tokens, special tokens parsed.
fn tokens_of(llama: &LlamaModel, s: &str) -> Vec<LlamaToken> {
    llama.vocab().tokenize(s.as_bytes(), false, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_picker_is_greedy_at_zero_temperature_and_stays_in_the_allowed_set() {
        let logits = [0.0, 5.0, 1.0, 9.0, 2.0];
        let mut p = Picker::new(1, 0.0, 4);
        assert_eq!(
            p.pick(&logits, [0, 1, 2, 4].map(LlamaToken).into_iter()),
            Some(LlamaToken(1))
        );
        let mut p = Picker::new(7, 1.0, 2);
        for _ in 0..200 {
            let t = p.pick(&logits, [0, 1, 2, 4].map(LlamaToken).into_iter()).unwrap();
            // top-2 of the allowed: 1 (5.0) and 4 (2.0).
            assert!(t == LlamaToken(1) || t == LlamaToken(4), "{t:?}");
        }
        assert_eq!(p.pick(&logits, std::iter::empty()), None);
    }

    #[test]
    fn the_picker_is_reproducible_from_its_seed() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.1).collect();
        let draw = |seed| {
            let mut p = Picker::new(seed, 1.0, 50);
            (0..30)
                .map(|_| p.pick(&logits, (0..50).map(LlamaToken)).unwrap().0)
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }
}
