//! The engine-bound probe on the real model: every configuration (flash
//! attention on/off, unified or per-sequence KV, prompts longer than a
//! decode batch) generates every token it was asked for, and the
//! flash-attention choice returns a measurement for both settings.

mod common;

use nrvna_engine::probe::{choose_flash_attn, run, ProbeConfig};
use nrvna_engine::Model;

fn model() -> Model {
    Model::load(&common::model_path(), 0, None).expect("load the test model")
}

#[test]
fn every_configuration_generates_every_token_and_the_choice_measures_both() {
    let m = model();
    let prompts: Vec<_> = ["Name a colour.", "Count to three.", "Say hello."]
        .iter()
        .map(|p| m.tokenize(&m.render(None, p).unwrap()))
        .collect();
    for flash_attn in [false, true] {
        for kv_unified in [true, false] {
            let cfg = ProbeConfig {
                flash_attn,
                kv_unified,
                threads: 2,
                n_ctx: 768,
                n_batch: 32,
            };
            let r = run(&m.weights, &cfg, &prompts, 5).unwrap_or_else(|e| panic!("{cfg:?}: {e}"));
            assert_eq!(r.generated, 15, "{cfg:?}");
            assert_eq!(r.prompt_tokens, prompts.iter().map(Vec::len).sum::<usize>());
            // The chat template's preamble is decoded once and copied.
            let shortest = prompts.iter().map(Vec::len).min().unwrap();
            assert!(r.shared_prefix > 0 && r.shared_prefix < shortest, "{cfg:?}: {r:?}");
            assert!(r.tok_s() > 0.0 && r.gen_tok_s() >= r.tok_s(), "{cfg:?}: {r:?}");
        }
    }
    let base = ProbeConfig {
        flash_attn: false,
        kv_unified: true,
        threads: 2,
        n_ctx: 256,
        n_batch: 64,
    };
    // 16 sequences of 64 prompt tokens do not fit in 256 cells: the
    // measurement sizes its own context.
    let (_, on, off) = choose_flash_attn(&m.weights, &base, 16, false).unwrap();
    assert!(on > 0.0 && off > 0.0, "on {on}, off {off}");
}
