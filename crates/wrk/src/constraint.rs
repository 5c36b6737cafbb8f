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

use anyhow::{anyhow, bail, Context, Result};
use nrvna_core::fsio::{read_limited, ReadError};
use nrvna_core::OutputFormat;
use serde_json::Value;

/// The largest schema or grammar file accepted.
pub const MAX_CONSTRAINT_BYTES: u64 = 256 * 1024;

/// Reads and checks a `--json-schema` file, and derives its grammar.
pub fn json_schema_file(path: &Path) -> Result<OutputFormat> {
    let text = read_constraint_file(path, "--json-schema")?;
    let v: Value =
        serde_json::from_str(&text).map_err(|e| anyhow!("--json-schema {} is not valid JSON: {e}", path.display()))?;
    let grammar = check_schema(&v).with_context(|| format!("--json-schema {}", path.display()))?;
    Ok(OutputFormat::JsonSchema { schema: text, grammar })
}

/// Reads and checks a `--grammar` file (GBNF text; the daemon parses it).
pub fn grammar_file(path: &Path) -> Result<OutputFormat> {
    Ok(OutputFormat::Gbnf(read_constraint_file(path, "--grammar")?))
}

/// Checks that `v` is a JSON Schema: valid against its meta-schema and
/// compilable (patterns are valid regexes, local `$ref`s resolve), and
/// that a grammar can express it. Returns that grammar (GBNF).
pub fn check_schema(v: &Value) -> Result<String> {
    if !v.is_object() {
        bail!("is not a JSON Schema: a schema must be a JSON object such as {{\"type\": \"object\", ...}}");
    }
    jsonschema::meta::validate(v).map_err(|e| {
        let at = e.instance_path().to_string();
        if at.is_empty() {
            anyhow!("is not a valid JSON Schema: {e}")
        } else {
            anyhow!("is not a valid JSON Schema: at {at}: {e}")
        }
    })?;
    jsonschema::validator_for(v).map_err(|e| anyhow!("is not a usable JSON Schema: {e}"))?;
    nrvna_schema::json_schema_to_gbnf(v)
        .map_err(|e| anyhow!("cannot be turned into a grammar for constrained generation: {e}"))
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accepts_ordinary_schemas() {
        for s in [
            json!({"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}),
            json!({"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "array", "items": {"type": "integer"}}),
            json!({"$defs": {"a": {"type": "string"}}, "$ref": "#/$defs/a"}),
        ] {
            let g = check_schema(&s).unwrap_or_else(|e| panic!("{s}: {e:#}"));
            assert!(g.starts_with("root ::= "), "{g}");
        }
    }

    #[test]
    fn refuses_things_that_are_not_schemas() {
        for s in [
            json!([1, 2]),
            json!("string"),
            json!({"type": "strnig"}),
            json!({"type": 5}),
            json!({"required": "name"}),
            json!({"properties": {"a": 1}}),
            json!({"$ref": "#/$defs/nowhere"}),
        ] {
            assert!(check_schema(&s).is_err(), "{s} must be refused");
        }
    }

    #[test]
    fn refuses_a_valid_schema_that_no_grammar_can_enforce_with_the_reason() {
        let e = check_schema(&json!({"type": "object", "properties": {"n": {"type": "number", "maximum": 1.5}}}))
            .expect_err("a fractional number bound cannot be enforced");
        let msg = format!("{e:#}");
        assert!(msg.contains("#/properties/n") && msg.contains("maximum"), "{msg}");
    }
}
