//! One sequence's generation bookkeeping, shared by both engines so that
//! they end jobs identically: token-to-text with UTF-8 held back across
//! token boundaries, end-of-generation, stop strings and `max_tokens`.

use std::sync::Arc;

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

use crate::job::{Finish, Observer};
use crate::plan::sampling::TokenSampler;

/// The text side of a generating sequence.
pub struct Generation {
    pub sampler: TokenSampler,
    pending: Vec<u8>,
    piece: Vec<u8>,
    pub text: String,
    pub generated: u32,
    pub max_tokens: u32,
    stop: Vec<String>,
    pub obs: Arc<dyn Observer>,
    pub finish: Option<Finish>,
}

impl Generation {
    pub fn new(sampler: TokenSampler, max_tokens: u32, stop: Vec<String>, obs: Arc<dyn Observer>) -> Generation {
        Generation {
            sampler,
            pending: Vec::new(),
            piece: Vec::with_capacity(32),
            text: String::new(),
            generated: 0,
            max_tokens,
            stop,
            obs,
            finish: None,
        }
    }

    /// Takes the token just sampled. Returns `true` when generation goes on
    /// (the token must be decoded next), `false` when the sequence is done.
    pub fn push(&mut self, llama: &LlamaModel, t: LlamaToken) -> bool {
        let vocab = llama.vocab();
        if vocab.is_eog(t) {
            self.flush_pending();
            self.finish = Some(Finish::Eog);
            return false;
        }
        self.generated += 1;
        self.piece.clear();
        vocab.token_to_piece_into(t, &mut self.piece, false, None);
        self.pending.extend_from_slice(&self.piece);
        let before = self.text.len();
        self.take_valid_utf8();
        if self.text.len() > before {
            if let Some(cut) = self.find_stop(before) {
                self.text.truncate(cut);
                self.finish = Some(Finish::StopString);
                return false;
            }
            self.obs.on_text(&self.text[before..], self.generated);
        }
        if self.generated >= self.max_tokens {
            self.flush_pending();
            self.finish = Some(Finish::Length);
            return false;
        }
        true
    }

    /// Ends the sequence because the context is full.
    pub fn end_for_length(&mut self) {
        self.flush_pending();
        self.finish = Some(Finish::Length);
    }

    fn find_stop(&self, new_from: usize) -> Option<usize> {
        self.stop
            .iter()
            .filter_map(|s| {
                let mut from = new_from.saturating_sub(s.len() - 1);
                while !self.text.is_char_boundary(from) {
                    from -= 1;
                }
                self.text[from..].find(s.as_str()).map(|i| from + i)
            })
            .min()
    }

    /// Moves the longest valid UTF-8 prefix of `pending` into `text`.
    fn take_valid_utf8(&mut self) {
        match std::str::from_utf8(&self.pending) {
            Ok(s) => {
                self.text.push_str(s);
                self.pending.clear();
            }
            Err(e) => {
                let valid = e.valid_up_to();
                self.text
                    .push_str(std::str::from_utf8(&self.pending[..valid]).unwrap_or_default());
                match e.error_len() {
                    // An incomplete character at the end: keep it for the next token.
                    None => {
                        self.pending.drain(..valid);
                    }
                    // Invalid bytes: replace them and go on.
                    Some(n) => {
                        self.text.push('\u{FFFD}');
                        self.pending.drain(..valid + n);
                        self.take_valid_utf8();
                    }
                }
            }
        }
    }

    fn flush_pending(&mut self) {
        if !self.pending.is_empty() {
            let before = self.text.len();
            self.text.push_str(&String::from_utf8_lossy(&self.pending));
            self.pending.clear();
            self.obs.on_text(&self.text[before..], self.generated);
        }
    }
}
