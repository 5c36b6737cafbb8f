//! The engines' sampler (`nrvna_engine::sampling::TokenSampler`) applies the
//! repetition penalty and greedy selection itself; everything else goes
//! through llama.cpp's chain. It must pick exactly the tokens that one
//! llama.cpp chain with its penalties sampler picks. Here both read the
//! same logits of the real model at every step of a generation, for greedy
//! and seeded sampling, short and long penalty windows, a penalty below 1,
//! and a grammar, and must agree on every token.
//!
//! Needs the model of `scripts/fetch-model.sh`.

mod common;

use std::num::NonZeroU32;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;
use nrvna_engine::{Model, Sampling};

const STEPS: usize = 80;

fn sampling(temp: f32, repeat_penalty: f32, repeat_last_n: i32, seed: u32) -> Sampling {
    Sampling {
        temp,
        top_k: 40,
        top_p: 0.9,
        min_p: 0.05,
        repeat_penalty,
        frequency_penalty: 0.0,
        presence_penalty: 0.0,
        repeat_last_n,
        seed: Some(seed),
    }
}

/// Generates STEPS tokens with llama.cpp's chain choosing, and checks that
/// ours picks the same token from the same logits at every step. Returns
/// the tokens and how many distinct ones there were.
fn compare(model: &Model, label: &str, s: &Sampling, grammar: Option<&str>, prompt: &str) -> (Vec<LlamaToken>, usize) {
    let backend = nrvna_engine::llama::backend().expect("backend");
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(512))
        .with_n_threads(2)
        .with_n_threads_batch(2);
    let mut ctx = model.weights.llama.new_context(backend, params).expect("context");
    let toks = model.tokenize(&model.render(None, prompt).expect("render"));
    let mut batch = LlamaBatch::new(512, 1);
    let last = toks.len() - 1;
    for (i, &t) in toks.iter().enumerate() {
        batch.add(t, i as i32, &[0], i == last).expect("batch");
    }
    ctx.decode(&mut batch).expect("prefill");
    let mut ours = s.sampler(&model.weights.llama, grammar).expect("our sampler");
    let mut theirs = s.llama_chain(&model.weights.llama, grammar).expect("llama.cpp chain");
    let mut out = Vec::new();
    for (step, pos) in (0..STEPS).zip(toks.len() as i32..) {
        let mine = ours.pick(ctx.get_logits_ith(-1));
        let t = theirs.sample(&ctx, -1);
        assert_eq!(
            mine, t,
            "{label}: step {step}: ours picked {mine:?}, llama.cpp's chain {t:?} (after {out:?})"
        );
        ours.accept(t);
        out.push(t);
        if model.weights.llama.vocab().is_eog(t) {
            break;
        }
        batch.clear();
        batch.add(t, pos, &[0], true).expect("batch");
        ctx.decode(&mut batch).expect("decode");
    }
    let mut distinct = out.clone();
    distinct.sort_by_key(|t| t.0);
    distinct.dedup();
    (out, distinct.len())
}

#[test]
fn our_sampler_picks_what_llama_cpp_chain_picks() {
    let model = Model::load(&common::model_path(), 0, None).expect("load the test model");
    let prompt = "List the colours of the rainbow, then list them again, and again.";
    // Greedy with the daemon's default penalty.
    let (a, _) = compare(&model, "greedy 1.1/64", &sampling(0.0, 1.1, 64, 0), None, prompt);
    // Greedy without a penalty must repeat itself more than with a strong
    // one over a short window, which turns over many times in 80 tokens.
    let (plain, _) = compare(&model, "greedy, no penalty", &sampling(0.0, 1.0, 64, 0), None, prompt);
    let (strong, _) = compare(&model, "greedy 1.5/8", &sampling(0.0, 1.5, 8, 0), None, prompt);
    assert!(
        a.len() >= 20 && plain.len() >= 20 && strong.len() >= 20,
        "generations too short to compare"
    );
    assert_ne!(
        plain, strong,
        "the penalty changed nothing: the comparison would prove little"
    );
    // A penalty below 1 favours repeats; a negative window disables it.
    compare(&model, "greedy 0.8/32", &sampling(0.0, 0.8, 32, 0), None, prompt);
    let (neg, _) = compare(&model, "greedy 1.3/-1", &sampling(0.0, 1.3, -1, 0), None, prompt);
    assert_eq!(neg, plain, "a negative window is no penalty, as in llama.cpp");
    // Seeded sampling through the chain, with the penalty applied by us.
    for seed in [1, 7, 42] {
        compare(
            &model,
            &format!("temp 0.9 seed {seed}"),
            &sampling(0.9, 1.1, 64, seed),
            None,
            prompt,
        );
    }
    compare(&model, "temp 1.5, no penalty", &sampling(1.5, 1.0, 64, 3), None, prompt);
    // OpenAI's frequency and presence penalties (alone and with a repeat
    // penalty, also negative), greedy and seeded: they must change the
    // output, and still pick what llama.cpp picks.
    let with = |temp: f32, repeat: f32, f: f32, p: f32, seed: u32| Sampling {
        frequency_penalty: f,
        presence_penalty: p,
        ..sampling(temp, repeat, 64, seed)
    };
    let (freq, _) = compare(&model, "greedy freq 1.0", &with(0.0, 1.0, 1.0, 0.0, 0), None, prompt);
    let (pres, _) = compare(
        &model,
        "greedy presence 1.5",
        &with(0.0, 1.0, 0.0, 1.5, 0),
        None,
        prompt,
    );
    assert!(
        freq != plain && pres != plain,
        "frequency or presence penalty changed nothing"
    );
    compare(
        &model,
        "greedy 1.1 freq -0.5 presence 0.5",
        &with(0.0, 1.1, -0.5, 0.5, 0),
        None,
        prompt,
    );
    compare(
        &model,
        "temp 0.9 freq 0.4 presence 0.6",
        &with(0.9, 1.1, 0.4, 0.6, 11),
        None,
        prompt,
    );
    // A grammar, greedy and seeded.
    let g = r#"root ::= ("red" | "orange" | "yellow" | "green" | "blue") (", " ("red" | "orange" | "yellow" | "green" | "blue"))*"#;
    compare(&model, "grammar greedy", &sampling(0.0, 1.1, 16, 0), Some(g), prompt);
    compare(&model, "grammar temp", &sampling(0.8, 1.2, 16, 5), Some(g), prompt);
}
