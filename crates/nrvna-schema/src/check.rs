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
    /// No value satisfies it (or none that a grammar can leave the model
    /// free to write): a job would only run to its token limit and fail.
    #[error("allows no value: {0}")]
    Unsatisfiable(String),
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
    let grammar = json_schema_to_gbnf(schema)?;
    satisfiable(schema, &grammar)?;
    Ok(grammar)
}

/// Refuses a schema whose grammar accepts no text (a required property
/// that is the object itself, without end), or whose shortest grammar text
/// the schema itself refuses (constraints that contradict each other, such
/// as a `const` of another `type`).
fn satisfiable(schema: &Value, grammar: &str) -> Result<(), CheckError> {
    let Ok(found) = crate::witness::shortest(grammar) else {
        // Not a grammar this crate wrote; nothing to conclude.
        return Ok(());
    };
    let Some(text) = found else {
        return Err(CheckError::Unsatisfiable(
            "every value it allows contains itself without end (a required property or item that refers back to \
             the schema with no way out); make the recursion optional"
                .into(),
        ));
    };
    let Ok(value) = serde_json::from_str::<Value>(&text) else {
        return Ok(());
    };
    validate_instance(schema, &value).map_err(|e| {
        CheckError::Unsatisfiable(format!(
            "its constraints contradict each other: the simplest value the rest of it allows, {text}, is refused \
             ({e}); check `type` against `const`/`enum`, and the bounds"
        ))
    })
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
            // Each keyword the converter reads, so the satisfiability check
            // (the shortest text of the grammar must satisfy the schema)
            // refuses none of them.
            json!({"type": "object", "properties": {
                "id": {"type": "integer", "minimum": 10, "maximum": 999},
                "neg": {"type": "integer", "maximum": -5},
                "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2,4}$"},
                "name": {"type": "string", "minLength": 3, "maxLength": 8},
                "day": {"type": "string", "format": "date"},
                "at": {"type": "string", "format": "date-time"},
                "uid": {"type": "string", "format": "uuid"},
                "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 4},
                "pair": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "boolean"}]},
                "kind": {"enum": ["a", "b", 3, null]},
                "fixed": {"const": {"k": [1, 2]}},
                "either": {"anyOf": [{"type": "null"}, {"type": "number", "minimum": 0.0}]},
                "one": {"oneOf": [{"type": "string", "minLength": 2}, {"type": "integer", "minimum": 7}]},
                "free": {"type": "object", "additionalProperties": {"type": "integer"}},
                "nested": {"type": "object", "properties": {"x": {"type": ["string", "null"]}}, "required": ["x"]}
            }, "required": ["id", "neg", "code", "name", "day", "at", "uid", "tags", "pair", "kind", "fixed", "either", "one", "free", "nested"],
               "additionalProperties": false}),
            json!({"allOf": [{"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
                             {"type": "object", "properties": {"b": {"type": "integer", "minimum": 3}}, "required": ["b"]}]}),
        ] {
            let g = check_schema(&s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert!(g.starts_with("root ::= "), "{g}");
            // The check read the grammar (it concludes nothing from one it cannot read).
            let w = crate::witness::shortest(&g).unwrap_or_else(|e| panic!("{s}: {e}\n{g}"));
            let v: Value = serde_json::from_str(&w.expect("a text")).expect("JSON");
            assert!(validate_instance(&s, &v).is_ok());
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
    fn refuses_schemas_that_no_value_satisfies() {
        for (s, says) in [
            (json!({"type": "string", "const": 5}), "contradict"),
            (json!({"type": "string", "enum": [1, 2]}), "contradict"),
            (
                json!({"type": "object", "properties": {"a": {"type": "integer", "const": "x"}}, "required": ["a"]}),
                "contradict",
            ),
            (
                json!({"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"]}),
                "without end",
            ),
            (
                json!({"$defs": {"n": {"type": "array", "items": {"$ref": "#/$defs/n"}, "minItems": 1}}, "$ref": "#/$defs/n"}),
                "without end",
            ),
        ] {
            match check_schema(&s) {
                Err(CheckError::Unsatisfiable(m)) => assert!(m.contains(says), "{s}: {m}"),
                other => panic!("{s} must be refused as unsatisfiable, got {other:?}"),
            }
        }
        // Recursion with a way out, and a const of its own type, are fine.
        for s in [
            json!({"type": "object", "properties": {"a": {"$ref": "#"}}}),
            json!({"$defs": {"n": {"type": "array", "items": {"$ref": "#/$defs/n"}}}, "$ref": "#/$defs/n"}),
            json!({"type": "integer", "const": 5}),
            json!({"enum": ["a", 1, null]}),
        ] {
            check_schema(&s).unwrap_or_else(|e| panic!("{s}: {e}"));
        }
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
