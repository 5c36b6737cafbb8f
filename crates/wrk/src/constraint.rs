//! Structured-output constraints: `--json-schema FILE` and `--grammar FILE`.
//!
//! The file is read without following a symlink, must be a non-empty
//! regular UTF-8 file of at most 256 KiB, and a schema must be valid JSON
//! and a valid JSON Schema (checked against its meta-schema), so a job is
//! never published with a constraint the daemon would choke on. A schema
//! also gets its GBNF grammar (`grammar.gbnf`, which the contract requires
//! beside `schema.json`); a schema no grammar can express is refused with
//! the reason.

use std::path::Path;

use anyhow::{anyhow, bail, Result};
use nrvna_core::fsio::{read_limited, ReadError};
use nrvna_core::OutputFormat;
use nrvna_schema::check::{check_schema, MAX_CONSTRAINT_BYTES};
use serde_json::Value;

/// Reads and checks a `--json-schema` file, and derives its grammar.
pub fn json_schema_file(path: &Path) -> Result<OutputFormat> {
    let text = read_constraint_file(path, "--json-schema")?;
    let v: Value =
        serde_json::from_str(&text).map_err(|e| anyhow!("--json-schema {} is not valid JSON: {e}", path.display()))?;
    let grammar = check_schema(&v).map_err(|e| anyhow!("--json-schema {} {e}", path.display()))?;
    Ok(OutputFormat::JsonSchema { schema: text, grammar })
}

/// Reads and checks a `--grammar` file (GBNF text; the daemon parses it).
pub fn grammar_file(path: &Path) -> Result<OutputFormat> {
    Ok(OutputFormat::Gbnf(read_constraint_file(path, "--grammar")?))
}

fn read_constraint_file(path: &Path, flag: &str) -> Result<String> {
    let shown = path.display();
    let bytes = read_limited(path, MAX_CONSTRAINT_BYTES).map_err(|e| match e {
        ReadError::Missing => anyhow!("{flag} {shown}: no such file"),
        ReadError::Symlink => {
            anyhow!("{flag} {shown} is a symlink; give the path of the file itself")
        }
        ReadError::NotRegular => anyhow!("{flag} {shown} is not a regular file"),
        ReadError::TooLarge { limit } => {
            anyhow!("{flag} {shown} is larger than the limit of {limit} bytes")
        }
        ReadError::Io(e) => anyhow!("{flag} {shown}: reading it failed: {e}"),
    })?;
    let text = String::from_utf8(bytes).map_err(|_| anyhow!("{flag} {shown} is not valid UTF-8"))?;
    if text.trim().is_empty() {
        bail!("{flag} {shown} is empty");
    }
    if text.contains('\0') {
        bail!("{flag} {shown} contains a NUL byte");
    }
    Ok(text)
}
