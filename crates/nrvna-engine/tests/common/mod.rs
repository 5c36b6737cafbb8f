//! What the engine's integration tests share: the default test model.

use std::path::{Path, PathBuf};

/// The default model (scripts/fetch-model.sh), checked to be there.
pub fn model_path() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "model {} is missing; fetch it with: scripts/fetch-model.sh",
        p.display()
    );
    p
}
