//! Sampling parameters and the llama.cpp sampler chain built from them.
//!
//! The chain order follows llama.cpp's defaults: grammar, repetition
//! penalty, top-k, top-p, min-p, temperature, then a seeded draw; a
//! temperature of 0 means greedy.

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;

/// Sampling settings of one job.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    pub temp: f32,
    pub top_k: i32,
    pub top_p: f32,
    pub min_p: f32,
    pub repeat_penalty: f32,
    pub repeat_last_n: i32,
    /// `None`: a fresh seed is drawn per job (and recorded).
    pub seed: Option<u32>,
}

/// A seed for a job that did not ask for one: varied, but recorded so the
/// job can be reproduced.
pub fn fresh_seed() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ d.as_secs() as u32)
        .unwrap_or(0);
    t.wrapping_mul(2_654_435_761)
        .wrapping_add(N.fetch_add(0x9E37_79B9, Ordering::Relaxed))
        & 0x7FFF_FFFF
}

impl Sampling {
    /// Builds the sampler chain. `grammar` must already have been checked
    /// with [`check_grammar`].
    pub fn chain(&self, model: &LlamaModel, grammar: Option<&str>) -> Result<LlamaSampler, String> {
        let mut parts = Vec::new();
        if let Some(g) = grammar {
            parts.push(grammar_sampler(model, g).map_err(|e| e.to_string())?);
        }
        if self.repeat_penalty != 1.0 && self.repeat_last_n != 0 {
            parts.push(LlamaSampler::penalties(
                model.n_vocab(),
                self.repeat_last_n,
                self.repeat_penalty,
                0.0,
                0.0,
            ));
        }
        if self.temp <= 0.0 {
            parts.push(LlamaSampler::greedy());
        } else {
            if self.top_k > 0 {
                parts.push(LlamaSampler::top_k(self.top_k));
            }
            if self.top_p < 1.0 {
                parts.push(LlamaSampler::top_p(self.top_p, 1));
            }
            if self.min_p > 0.0 {
                parts.push(LlamaSampler::min_p(self.min_p, 1));
            }
            parts.push(LlamaSampler::temp(self.temp));
            parts.push(LlamaSampler::dist(self.seed.unwrap_or(0)));
        }
        Ok(LlamaSampler::chain_simple(parts))
    }
}

fn grammar_sampler(model: &LlamaModel, g: &str) -> Result<LlamaSampler, GrammarRejected> {
    // llama.cpp's logger lines (through the log callback, on this thread)
    // say that and where it failed; the parser's own reason goes to stderr,
    // which is never redirected here: see `GrammarRejected`.
    match crate::model::with_captured_llama_errors(|| LlamaSampler::grammar(model, g, "root")) {
        Ok((Ok(s), _)) => Ok(s),
        Ok((Err(e), logs)) => Err(GrammarRejected {
            error: e.to_string(),
            logs,
        }),
        Err(e) => Err(GrammarRejected {
            error: e,
            logs: Vec::new(),
        }),
    }
}

/// llama.cpp refused a grammar. `logs` are the lines its logger emitted
/// while parsing; the parser's detailed reason (`expecting ... at ...`,
/// `Undefined rule identifier ...`) is printed on stderr by llama.cpp
/// itself, so the daemon obtains it from a child process
/// (`nrvnad explain-grammar`) whose stderr it reads.
#[derive(Debug, Clone)]
pub struct GrammarRejected {
    pub error: String,
    pub logs: Vec<String>,
}

impl std::fmt::Display for GrammarRejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.logs.is_empty() {
            write!(f, "llama.cpp rejected the grammar: {}", self.error)
        } else {
            write!(f, "llama.cpp rejected the grammar: {}", self.logs.join("; "))
        }
    }
}

/// Checks that llama.cpp accepts a GBNF grammar.
pub fn check_grammar(model: &LlamaModel, g: &str) -> Result<(), GrammarRejected> {
    grammar_sampler(model, g).map(drop)
}

/// The lines of llama.cpp's stderr output that explain why it rejected a
/// grammar (its parser prints them there, with the grammar text after).
pub fn grammar_reason(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| {
            l.contains("error parsing grammar")
                || l.contains("Undefined rule")
                || l.contains("expecting")
                || l.contains("invalid grammar")
                || l.contains("left recursion")
        })
        .map(|l| l.trim().to_owned())
        .collect()
}

/// Converts a JSON Schema to a GBNF grammar with llama.cpp's converter.
pub fn schema_to_grammar(schema: &str) -> Result<String, String> {
    llama_cpp_2::json_schema_to_grammar(schema)
        .map_err(|e| format!("llama.cpp could not convert schema.json to a grammar: {e}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn grammar_reason_keeps_the_parser_lines_only() {
        let err = "parse: error parsing grammar: expecting ::= at x\n\nroot ::= x\nllama_grammar_init_impl: failed to parse grammar\n";
        assert_eq!(
            super::grammar_reason(err),
            vec!["parse: error parsing grammar: expecting ::= at x".to_owned()]
        );
    }
}
