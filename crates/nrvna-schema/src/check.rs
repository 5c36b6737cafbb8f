//! Checking a user's JSON Schema before a job is published (feature
//! `validate`, which brings the `jsonschema` crate): valid against its
//! meta-schema, compilable (patterns are regexes, local `$ref`s resolve),
//! and expressible as a grammar. Every submitter (`wrk`, batch files, the
//! gateway) checks through here, and the daemon validates output with
//! [`validate_instance`].

use serde_json::Value;

use crate::{json_schema_to_gbnf, SchemaError};

/// The largest `schema.json` or `grammar.gbnf` a job may carry, in bytes.
pub const MAX_CONSTRAINT_BYTES: u64 = 256 * 1024;

/// Why a schema was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    #[error("is not a JSON Schema: a schema must be a JSON object such as {{\"type\": \"object\", ...}}")]
    NotAnObject,
    /// Not valid against the meta-schema; `at` is the place in the schema
    /// (empty for its root).
    #[error("is not a valid JSON Schema: {}{reason}", if at.is_empty() { String::new() } else { format!("at {at}: ") })]
    Invalid { at: String, reason: String },
    #[error("is not a usable JSON Schema: {0}")]
    Unusable(String),
    #[error("cannot be turned into a grammar for constrained generation: {0}")]
    NoGrammar(#[from] SchemaError),
}

/// Checks that `schema` is a usable JSON Schema that a grammar can
/// enforce, and returns that grammar (GBNF, start rule `root`).
pub fn check_schema(schema: &Value) -> Result<String, CheckError> {
    if !schema.is_object() {
        return Err(CheckError::NotAnObject);
    }
    jsonschema::meta::validate(schema).map_err(|e| CheckError::Invalid {
        at: e.instance_path().to_string(),
        reason: e.to_string(),
    })?;
    jsonschema::validator_for(schema).map_err(|e| CheckError::Unusable(e.to_string()))?;
    Ok(json_schema_to_gbnf(schema)?)
}

/// Validates `instance` against `schema`; the error names the first
/// violation and where it is.
pub fn validate_instance(schema: &Value, instance: &Value) -> Result<(), String> {
    let validator =
        jsonschema::validator_for(schema).map_err(|e| format!("schema.json is not a valid JSON Schema: {e}"))?;
    let first = validator.iter_errors(instance).next().map(|e| {
        let at = e.instance_path().to_string();
        if at.is_empty() {
            e.to_string()
        } else {
            format!("{e} (at {at})")
        }
    });
    match first {
        None => Ok(()),
        Some(e) => Err(e),
    }
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
            let g = check_schema(&s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert!(g.starts_with("root ::= "), "{g}");
        }
    }

    #[test]
    fn refuses_things_that_are_not_schemas() {
        assert_eq!(check_schema(&json!([1, 2])), Err(CheckError::NotAnObject));
        assert_eq!(check_schema(&json!("string")), Err(CheckError::NotAnObject));
        for s in [
            json!({"type": "strnig"}),
            json!({"type": 5}),
            json!({"required": "name"}),
            json!({"properties": {"a": 1}}),
        ] {
            assert!(
                matches!(check_schema(&s), Err(CheckError::Invalid { .. })),
                "{s} must be refused"
            );
        }
        assert!(matches!(
            check_schema(&json!({"$ref": "#/$defs/nowhere"})),
            Err(CheckError::Unusable(_))
        ));
        let e = check_schema(&json!({"properties": {"a": 1}})).unwrap_err().to_string();
        assert!(e.starts_with("is not a valid JSON Schema: at /properties/a: "), "{e}");
    }

    #[test]
    fn refuses_a_valid_schema_that_no_grammar_can_enforce_with_the_reason() {
        let e = check_schema(&json!({"type": "object", "properties": {"n": {"type": "number", "maximum": 1.5}}}))
            .expect_err("a fractional number bound cannot be enforced");
        assert!(matches!(e, CheckError::NoGrammar(_)));
        let msg = e.to_string();
        assert!(msg.contains("#/properties/n") && msg.contains("maximum"), "{msg}");
    }

    #[test]
    fn reports_the_first_violation_of_an_instance() {
        let schema = json!({"type":"object","properties":{"n":{"type":"integer"}},"required":["n"]});
        assert!(validate_instance(&schema, &json!({"n": 3})).is_ok());
        let e = validate_instance(&schema, &json!({"n": "x"})).unwrap_err();
        assert!(e.contains("/n"), "{e}");
        assert!(validate_instance(&schema, &json!({})).unwrap_err().contains("\"n\""));
    }
}
