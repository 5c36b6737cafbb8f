//! The W16 job's shape, shared by the scenarios that run it (W16, scale,
//! Gemma) and by the engine-bound probe that they are compared with: the
//! topics of its prompts, the tokens each job generates, and the daemons'
//! environment.

use crate::tools::{env, Env};

/// One topic per W16 job ("Write a short paragraph about TOPIC.").
pub const TOPICS: [&str; 16] = [
    "the ocean",
    "mountains",
    "coffee",
    "bicycles",
    "libraries",
    "volcanoes",
    "honeybees",
    "the moon",
    "trains",
    "gardens",
    "chess",
    "rain",
    "deserts",
    "music",
    "bridges",
    "winter",
];

/// Tokens each W16-shaped job generates (fewer with --quick).
pub fn predict(quick: bool) -> u32 {
    if quick {
        16
    } else {
        64
    }
}

/// The daemons' environment in the W16 shape: greedy, `predict` tokens
/// per job, a 2048-token context.
pub fn daemon_env(predict: u32) -> Env {
    env(&[
        ("NRVNA_TEMP", "0"),
        ("NRVNA_PREDICT", &predict.to_string()),
        ("NRVNA_MAX_CTX", "2048"),
    ])
}
