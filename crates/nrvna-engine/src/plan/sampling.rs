//! Sampling parameters and the sampler of one generation built from them.
//!
//! The order follows llama.cpp's defaults: grammar, repetition penalty,
//! top-k, top-p, min-p, temperature, then a seeded draw; a temperature of 0
//! means greedy. Two parts are done here instead of in llama.cpp's chain,
//! with the same arithmetic and so the same tokens:
//!
//! - The repetition penalty touches only the tokens of its window.
//!   llama.cpp's penalties sampler looks every vocabulary entry up in a hash
//!   map, once per token generated: with Gemma 3's 262,144 entries that was
//!   about 8% of a batched run's CPU, on the engine thread while the other
//!   cores waited for the next decode.
//! - Greedy takes the first largest logit straight from the context's logits,
//!   without building the candidate array of the whole vocabulary.
//!
//! Grammar jobs and temperature sampling still go through llama.cpp's chain,
//! on candidates this module has already penalised (a grammar only sets
//! logits to minus infinity, which the penalty leaves there, so the order of
//! the two does not matter).

use std::collections::{HashMap, VecDeque};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::LlamaToken;

/// Sampling settings of one job.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    pub temp: f32,
    pub top_k: i32,
    pub top_p: f32,
    pub min_p: f32,
    pub repeat_penalty: f32,
    /// Subtracted once per occurrence in the window (0: none).
    pub frequency_penalty: f32,
    /// Subtracted once from every token in the window (0: none).
    pub presence_penalty: f32,
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
    /// Builds the sampler of one generation. `grammar` must already have
    /// been checked with [`check_grammar`].
    pub fn sampler(&self, model: &LlamaModel, grammar: Option<&str>) -> Result<TokenSampler, GrammarRejected> {
        let penalty = Penalty::new(self.penalties(), self.repeat_last_n);
        let mut parts = Vec::new();
        if let Some(g) = grammar {
            parts.push(grammar_sampler(model, g)?);
        }
        if self.temp > 0.0 {
            self.push_draw(&mut parts);
        } else if !parts.is_empty() {
            parts.push(LlamaSampler::greedy());
        }
        let chain = (!parts.is_empty()).then(|| LlamaSampler::chain_simple(parts));
        Ok(TokenSampler {
            penalty,
            chain,
            cur: Vec::new(),
        })
    }

    /// The same sampling as one llama.cpp chain (penalties sampler
    /// included), for comparing [`TokenSampler`] with it.
    #[doc(hidden)]
    pub fn llama_chain(&self, model: &LlamaModel, grammar: Option<&str>) -> Result<LlamaSampler, GrammarRejected> {
        let mut parts = Vec::new();
        if let Some(g) = grammar {
            parts.push(grammar_sampler(model, g)?);
        }
        if Penalty::new(self.penalties(), self.repeat_last_n).is_some() {
            parts.push(LlamaSampler::penalties(
                model.n_vocab(),
                self.repeat_last_n,
                self.repeat_penalty,
                self.frequency_penalty,
                self.presence_penalty,
            ));
        }
        if self.temp <= 0.0 {
            parts.push(LlamaSampler::greedy());
        } else {
            self.push_draw(&mut parts);
        }
        Ok(LlamaSampler::chain_simple(parts))
    }

    fn penalties(&self) -> Penalties {
        Penalties {
            repeat: self.repeat_penalty,
            frequency: self.frequency_penalty,
            presence: self.presence_penalty,
        }
    }

    /// Temperature sampling: top-k, top-p, min-p, temperature, seeded draw.
    fn push_draw(&self, parts: &mut Vec<LlamaSampler>) {
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
}

/// Picks each next token of one generation (see the module documentation).
pub struct TokenSampler {
    penalty: Option<Penalty>,
    /// llama.cpp's chain for grammar and temperature sampling; `None`:
    /// greedy, read straight from the logits.
    chain: Option<LlamaSampler>,
    /// The candidate array handed to the chain, kept between tokens.
    cur: Vec<LlamaTokenData>,
}

impl TokenSampler {
    /// Samples from the logits of output `idx` of the last decode (`-1`:
    /// the last output) and takes the token into the sampler's history.
    pub fn sample(&mut self, ctx: &LlamaContext<'_>, idx: i32) -> LlamaToken {
        let t = self.pick(ctx.get_logits_ith(idx));
        self.accept(t);
        t
    }

    /// The next token for these logits (one per vocabulary entry), without
    /// taking it into the history.
    pub fn pick(&mut self, logits: &[f32]) -> LlamaToken {
        let Some(chain) = self.chain.as_mut() else {
            return LlamaToken::new(greedy(logits, self.penalty.as_ref()) as i32);
        };
        let mut cur = std::mem::take(&mut self.cur);
        cur.clear();
        cur.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| LlamaTokenData::new(LlamaToken::new(i as i32), l, 0.0)),
        );
        if let Some(p) = &self.penalty {
            for (&t, &n) in &p.counts {
                if let Some(d) = cur.get_mut(t as usize) {
                    d.set_logit(p.apply(d.logit(), n));
                }
            }
        }
        let mut arr = LlamaTokenDataArray::new(cur, false);
        chain.apply(&mut arr);
        // Every chain ends in a selecting sampler (greedy or dist), which
        // always selects; the first candidate is llama.cpp's own fallback
        // for an empty selection.
        let t = arr.selected_token().unwrap_or_else(|| LlamaToken::new(0));
        self.cur = arr.data;
        t
    }

    /// Takes a token into the history: the penalty's window and the
    /// chain's state (grammar, draw).
    pub fn accept(&mut self, t: LlamaToken) {
        if let Some(c) = self.chain.as_mut() {
            c.accept(t);
        }
        if let Some(p) = self.penalty.as_mut() {
            p.accept(t.0);
        }
    }
}

/// The three penalties of llama.cpp's penalties sampler.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Penalties {
    /// Divides a positive logit, multiplies a negative one (1: none).
    repeat: f32,
    /// Subtracted once per occurrence (0: none).
    frequency: f32,
    /// Subtracted once from a token that occurs at all (0: none).
    presence: f32,
}

/// The penalties over the last `last_n` tokens taken, and how often each
/// occurs among them (llama.cpp's penalties sampler).
struct Penalty {
    by: Penalties,
    last_n: usize,
    recent: VecDeque<i32>,
    counts: HashMap<i32, u32>,
}

impl Penalty {
    /// `None` where llama.cpp's sampler would do nothing: no penalty (a
    /// repeat penalty of 1, the others 0) or a window of 0 (llama.cpp reads
    /// a negative window as 0).
    fn new(by: Penalties, last_n: i32) -> Option<Penalty> {
        let last_n = usize::try_from(last_n).unwrap_or(0);
        let any = by.repeat != 1.0 || by.frequency != 0.0 || by.presence != 0.0;
        (any && last_n > 0).then(|| Penalty {
            by,
            last_n,
            recent: VecDeque::with_capacity(last_n.min(4096)),
            counts: HashMap::new(),
        })
    }

    /// The logit of a token that occurs `count` (> 0) times in the window.
    fn apply(&self, logit: f32, count: u32) -> f32 {
        // Dividing a negative logit would make the token more likely.
        let l = if logit <= 0.0 {
            logit * self.by.repeat
        } else {
            logit / self.by.repeat
        };
        l - count as f32 * self.by.frequency - self.by.presence
    }

    fn accept(&mut self, t: i32) {
        *self.counts.entry(t).or_insert(0) += 1;
        if self.recent.len() >= self.last_n {
            if let Some(old) = self.recent.pop_front() {
                if let Some(c) = self.counts.get_mut(&old) {
                    *c -= 1;
                    if *c == 0 {
                        self.counts.remove(&old);
                    }
                }
            }
        }
        self.recent.push_back(t);
    }
}

/// The index of the first largest value, where the penalised tokens count
/// with their penalised logits: what llama.cpp's greedy sampler selects
/// (it keeps the first of equal maxima) after its penalties sampler.
fn greedy(logits: &[f32], penalty: Option<&Penalty>) -> usize {
    let mut hits: Vec<usize> = penalty
        .map(|p| {
            p.counts
                .keys()
                .map(|&t| t as usize)
                .filter(|&t| t < logits.len())
                .collect()
        })
        .unwrap_or_default();
    hits.sort_unstable();
    let mut best: Option<(f32, usize)> = None;
    // Strictly greater replaces, so the earliest of equal values stays.
    let mut consider = |v: f32, i: usize| match best {
        Some((b, _)) if v.partial_cmp(&b) != Some(std::cmp::Ordering::Greater) => {}
        _ => best = Some((v, i)),
    };
    let mut start = 0;
    for &h in &hits {
        if let Some((v, i)) = first_max(&logits[start..h]) {
            consider(v, start + i);
        }
        if let Some(p) = penalty {
            consider(p.apply(logits[h], p.counts[&(h as i32)]), h);
        }
        start = h + 1;
    }
    if let Some((v, i)) = first_max(&logits[start..]) {
        consider(v, start + i);
    }
    best.map_or(0, |(_, i)| i)
}

/// The largest value of `xs` and the index of its first occurrence (the
/// first value when none compares, as with NaN everywhere).
fn first_max(xs: &[f32]) -> Option<(f32, usize)> {
    let first = *xs.first()?;
    // Lanes the compiler turns into vector max instructions.
    const LANES: usize = 16;
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = xs.chunks_exact(LANES);
    for c in &mut chunks {
        for (m, &x) in lanes.iter_mut().zip(c) {
            *m = if x > *m { x } else { *m };
        }
    }
    let mut max = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    for m in lanes {
        max = if m > max { m } else { max };
    }
    Some(match xs.iter().position(|&x| x == max) {
        Some(i) => (max, i),
        None => (first, 0),
    })
}

fn grammar_sampler(model: &LlamaModel, g: &str) -> Result<LlamaSampler, GrammarRejected> {
    // llama.cpp's logger lines (through the log callback, on this thread)
    // say that and where it failed; the parser's own reason goes to stderr,
    // which is never redirected here: see `GrammarRejected`.
    match crate::llama::with_captured_llama_errors(|| LlamaSampler::grammar(model, g, "root")) {
        (Ok(s), _) => Ok(s),
        (Err(e), logs) => Err(GrammarRejected {
            error: e.to_string(),
            logs,
        }),
    }
}

/// llama.cpp refused a grammar. `logs` are the lines its logger emitted
/// while parsing; the parser's detailed reason (`expecting ... at ...`,
/// `Undefined rule identifier ...`) is printed on stderr by llama.cpp
/// itself, so the daemon obtains it from a child process
/// (`nrvnad explain-grammar`) whose stderr it reads.
#[derive(Debug, Clone, thiserror::Error)]
#[error("llama.cpp rejected the grammar: {}", self.reason())]
pub struct GrammarRejected {
    /// llama-cpp-2's error.
    pub error: String,
    pub logs: Vec<String>,
}

impl GrammarRejected {
    /// The logger's lines when there are any, else llama-cpp-2's error.
    fn reason(&self) -> String {
        if self.logs.is_empty() {
            self.error.clone()
        } else {
            self.logs.join("; ")
        }
    }
}

/// llama.cpp's converter refused a JSON Schema.
#[derive(Debug, thiserror::Error)]
#[error("llama.cpp could not convert schema.json to a grammar: {source}")]
pub struct SchemaError {
    source: llama_cpp_2::LlamaCppError,
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
pub fn schema_to_grammar(schema: &str) -> Result<String, SchemaError> {
    llama_cpp_2::json_schema_to_grammar(schema).map_err(|source| SchemaError { source })
}

#[cfg(test)]
mod tests {
    use super::{first_max, greedy, Penalties, Penalty};

    fn by(repeat: f32, frequency: f32, presence: f32) -> Penalties {
        Penalties {
            repeat,
            frequency,
            presence,
        }
    }

    /// The plain scan llama.cpp's greedy sampler does (first of equal
    /// maxima), on penalised values.
    fn reference(logits: &[f32], p: Option<&Penalty>) -> usize {
        let v = |i: usize| match p {
            Some(p) if p.counts.contains_key(&(i as i32)) => p.apply(logits[i], p.counts[&(i as i32)]),
            _ => logits[i],
        };
        let mut sel = 0;
        for i in 1..logits.len() {
            if v(i) > v(sel) {
                sel = i;
            }
        }
        sel
    }

    #[test]
    fn first_max_finds_the_first_of_equal_maxima_in_every_position() {
        assert_eq!(first_max(&[]), None);
        assert_eq!(first_max(&[1.0]), Some((1.0, 0)));
        for n in [2, 15, 16, 17, 33, 100] {
            for at in [0, n / 2, n - 1] {
                let mut xs = vec![-1.0f32; n];
                xs[at] = 3.0;
                if at + 1 < n {
                    xs[n - 1] = 3.0;
                }
                assert_eq!(first_max(&xs), Some((3.0, at)), "n={n} at={at}");
            }
        }
        assert_eq!(first_max(&[f32::NEG_INFINITY; 20]), Some((f32::NEG_INFINITY, 0)));
        assert_eq!(first_max(&[f32::NAN, 2.0, 5.0, f32::NAN]), Some((5.0, 2)));
    }

    #[test]
    fn greedy_matches_a_plain_scan_with_the_penalty_applied() {
        // A deterministic pseudo-random vocabulary of logits with ties.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x % 41) as f32 - 20.0) / 4.0
        };
        for round in 0..200 {
            let logits: Vec<f32> = (0..257).map(|_| next()).collect();
            let repeat = if round % 3 == 0 { 0.7 } else { 1.3 };
            // Frequency and presence penalties (OpenAI's), also negative.
            let (f, pr) = [(0.0, 0.0), (0.5, 0.0), (0.0, -1.5), (0.8, 1.2)][round % 4];
            let mut p = Penalty::new(by(repeat, f, pr), 8).expect("a penalty");
            assert_eq!(greedy(&logits, None), reference(&logits, None), "round {round}");
            for k in 0..20 {
                let t = ((next() * 4.0 + 20.0) as i32 * 6 + k) % 257;
                p.accept(t);
                assert!(p.recent.len() <= 8 && p.counts.values().sum::<u32>() as usize == p.recent.len());
                assert_eq!(
                    greedy(&logits, Some(&p)),
                    reference(&logits, Some(&p)),
                    "round {round} after {k}"
                );
            }
        }
    }

    #[test]
    fn the_chain_path_penalises_like_the_greedy_path() {
        use llama_cpp_2::sampling::LlamaSampler;
        use llama_cpp_2::token::LlamaToken;
        // Negative and positive logits (all negative in half the rounds, so
        // that the largest is a penalised negative one), some tokens
        // repeated in the window:
        // llama.cpp's greedy sampler in a chain must pick on the same
        // penalised values as the direct path.
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        for round in 0..100 {
            let logits: Vec<f32> = (0..97)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    ((x % 23) as f32 - 14.0) / 3.0 - if round % 4 < 2 { 0.0 } else { 5.0 }
                })
                .collect();
            let repeat = if round % 2 == 0 { 1.6 } else { 0.6 };
            let (f, pr) = [(0.0, 0.0), (0.0, 0.0), (0.7, -0.4), (-0.3, 1.1)][round % 4];
            let mut direct = super::TokenSampler {
                penalty: Penalty::new(by(repeat, f, pr), 16),
                chain: None,
                cur: Vec::new(),
            };
            let mut chained = super::TokenSampler {
                penalty: Penalty::new(by(repeat, f, pr), 16),
                chain: Some(LlamaSampler::chain_simple([LlamaSampler::greedy()])),
                cur: Vec::new(),
            };
            for k in 0..12 {
                let a = direct.pick(&logits);
                assert_eq!(a, chained.pick(&logits), "round {round} step {k}");
                // Take the pick and a token with a negative logit.
                let neg = logits.iter().position(|&l| l < 0.0).unwrap_or(0) + k;
                for t in [a, LlamaToken::new(neg as i32)] {
                    direct.accept(t);
                    chained.accept(t);
                }
            }
        }
    }

    #[test]
    fn the_penalty_window_slides_and_counts_repeats() {
        let mut p = Penalty::new(by(1.5, 0.0, 0.0), 3).expect("a penalty");
        for t in [5, 5, 7] {
            p.accept(t);
        }
        assert_eq!((p.counts[&5], p.counts[&7]), (2, 1));
        p.accept(9);
        p.accept(9);
        assert_eq!(p.counts.get(&5), None, "5 left the window");
        assert_eq!((p.counts[&7], p.counts[&9]), (1, 2));
        assert_eq!(p.apply(3.0, 1), 2.0);
        assert_eq!(p.apply(-2.0, 2), -3.0);
        // llama.cpp: logit -= count * frequency + presence, after the repeat penalty.
        let q = Penalty::new(by(2.0, 0.5, 0.25), 4).expect("a penalty");
        assert_eq!(q.apply(3.0, 2), 1.5 - 1.0 - 0.25);
        assert_eq!(q.apply(-1.0, 1), -2.0 - 0.5 - 0.25);
        assert!(Penalty::new(by(1.0, 0.0, 0.0), 64).is_none());
        assert!(Penalty::new(by(1.0, 0.1, 0.0), 64).is_some());
        assert!(Penalty::new(by(1.0, 0.0, -0.1), 64).is_some());
        assert!(Penalty::new(by(1.1, 0.0, 0.0), 0).is_none());
        assert!(Penalty::new(by(1.1, 0.0, 0.0), -1).is_none());
    }

    #[test]
    fn grammar_reason_keeps_the_parser_lines_only() {
        let err = "parse: error parsing grammar: expecting ::= at x\n\nroot ::= x\nllama_grammar_init_impl: failed to parse grammar\n";
        assert_eq!(
            super::grammar_reason(err),
            vec!["parse: error parsing grammar: expecting ::= at x".to_owned()]
        );
    }
}
