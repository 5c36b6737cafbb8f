//! Checking structured output against the job's `schema.json`.

use serde_json::Value;

/// Validates `instance` against `schema`; the error names the first violation.
pub fn validate(schema: &Value, instance: &Value) -> Result<(), String> {
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
    use serde_json::json;

    #[test]
    fn reports_the_first_violation() {
        let schema = json!({"type":"object","properties":{"n":{"type":"integer"}},"required":["n"]});
        assert!(super::validate(&schema, &json!({"n": 3})).is_ok());
        assert!(super::validate(&schema, &json!({"n": "x"})).unwrap_err().contains("/n"));
        assert!(super::validate(&schema, &json!({})).is_err());
    }
}
