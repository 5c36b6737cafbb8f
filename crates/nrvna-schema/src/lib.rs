//! JSON Schema to GBNF, without llama.cpp: `wrk` writes the effective
//! grammar of a `--json-schema` job as `grammar.gbnf` (the C++ daemon
//! requires it), and any other submitter can do the same.
//!
//! It reads what llama.cpp's own converter reads (types, `enum`, `const`,
//! required and optional properties, `additionalProperties`, arrays with
//! `minItems`/`maxItems`, tuples, nested objects, `$ref` into `$defs` or
//! `definitions`, `anyOf`/`oneOf`, `allOf` of objects, integer bounds,
//! string lengths, the formats `date`, `time`, `date-time`, `uuid`, and
//! anchored patterns), and writes grammars that accept the same JSON
//! texts, whitespace included. Where llama.cpp would quietly ignore a
//! constraint, this converter enforces it (a number's whole bounds) or
//! refuses the schema and says why (`uniqueItems`, an unanchored pattern,
//! a fractional bound, ...): a job is never published with a grammar that
//! lets through output its schema forbids.

#[cfg(feature = "validate")]
pub mod check;
pub mod gbnf;
pub mod pattern;
pub mod range;
pub mod witness;

use std::collections::HashMap;

use serde_json::{Map, Value};

use gbnf::{class, literal, repeat_separated, Rules};

/// Why a schema has no grammar: where in the schema, and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at {at}: {reason}")]
pub struct SchemaError {
    /// A JSON pointer into the schema, `#` for its root.
    pub at: String,
    pub reason: String,
}

/// The GBNF grammar (start rule `root`) of the JSON texts that `schema`
/// allows, or why it cannot be written.
pub fn json_schema_to_gbnf(schema: &Value) -> Result<String, SchemaError> {
    let mut c = Converter {
        root: schema,
        rules: Rules::default(),
        refs: HashMap::new(),
    };
    let top = c.visit(schema, "#", "root")?;
    // The start rule must be called `root`, also when the schema is a
    // built-in such as `true`.
    if top != "root" {
        c.rules.define("root", top);
    }
    Ok(c.rules.render())
}

/// Keywords that constrain values in ways a grammar of this converter
/// cannot enforce.
const UNSUPPORTED: &[&str] = &[
    "not",
    "if",
    "then",
    "else",
    "dependentRequired",
    "dependentSchemas",
    "dependencies",
    "patternProperties",
    "propertyNames",
    "minProperties",
    "maxProperties",
    "uniqueItems",
    "contains",
    "minContains",
    "maxContains",
    "multipleOf",
    "unevaluatedProperties",
    "unevaluatedItems",
    "additionalItems",
    "$dynamicRef",
    "$recursiveRef",
];

const SPACE: &str = "space";

/// Built-in rules: the JSON grammar and the string formats.
fn builtin(name: &str) -> Option<(&'static str, &'static [&'static str])> {
    Some(match name {
        // Between tokens: nothing, a space, or one or two line breaks and
        // up to 20 spaces or tabs (llama.cpp's limit, which keeps a model
        // from padding forever).
        SPACE => (r#"( " " | "\n"{1,2} [ \t]{0,20} )?"#, &[]),
        "json-char" => (r#"[^"\\\x7F\x00-\x1F] | "\\" ( ["\\bfnrt] | "u" [0-9a-fA-F]{4} )"#, &[]),
        "json-string" => (r#""\"" json-char* "\"""#, &["json-char"]),
        "json-digits" => (r#""0" | [1-9] [0-9]{0,15}"#, &[]),
        "json-number" => (
            r#""-"? json-digits ( "." [0-9]{1,16} )? ( [eE] [-+]? json-digits )?"#,
            &["json-digits"],
        ),
        "json-integer" => (r#""-"? json-digits"#, &["json-digits"]),
        "json-boolean" => (r#""true" | "false""#, &[]),
        "json-null" => (r#""null""#, &[]),
        "json-value" => (
            "json-object | json-array | json-string | json-number | json-boolean | json-null",
            &[
                "json-object",
                "json-array",
                "json-string",
                "json-number",
                "json-boolean",
                "json-null",
            ],
        ),
        "json-object" => (
            r#""{" space ( json-string ":" space json-value ( "," space json-string ":" space json-value )* )? space "}""#,
            &[SPACE, "json-string", "json-value"],
        ),
        "json-array" => (
            r#""[" space ( json-value ( "," space json-value )* )? space "]""#,
            &[SPACE, "json-value"],
        ),
        "fmt-date" => (
            r#"[0-9]{4} "-" ( "0" [1-9] | "1" [0-2] ) "-" ( "0" [1-9] | [12] [0-9] | "3" [01] )"#,
            &[],
        ),
        "fmt-hour" => (r#"[01] [0-9] | "2" [0-3]"#, &[]),
        "fmt-time" => (
            r#"fmt-hour ":" [0-5] [0-9] ":" [0-5] [0-9] ( "." [0-9]{3} )? ( "Z" | [-+] fmt-hour ":" [0-5] [0-9] )"#,
            &["fmt-hour"],
        ),
        "fmt-date-string" => (r#""\"" fmt-date "\"""#, &["fmt-date"]),
        "fmt-time-string" => (r#""\"" fmt-time "\"""#, &["fmt-time"]),
        "fmt-date-time-string" => (r#""\"" fmt-date "T" fmt-time "\"""#, &["fmt-date", "fmt-time"]),
        "fmt-uuid-string" => (
            r#""\"" [0-9a-fA-F]{8} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{4} "-" [0-9a-fA-F]{12} "\"""#,
            &[],
        ),
        _ => return None,
    })
}

struct Converter<'a> {
    root: &'a Value,
    rules: Rules,
    /// `$ref` string -> the rule that holds its target.
    refs: HashMap<String, String>,
}

fn err(at: &str, reason: impl Into<String>) -> SchemaError {
    SchemaError {
        at: at.to_owned(),
        reason: reason.into(),
    }
}

impl<'a> Converter<'a> {
    /// Adds a built-in rule and the ones it uses; returns its name.
    fn builtin(&mut self, name: &str) -> String {
        if !self.rules.contains(name) {
            let (body, deps) = builtin(name).unwrap_or(("", &[]));
            self.rules.add(name, body.to_owned());
            for d in deps {
                self.builtin(d);
            }
        }
        name.to_owned()
    }

    /// The expression for `schema` (a rule name for anything but a
    /// literal). `at` is its JSON pointer, `name` the rule name to use.
    fn visit(&mut self, schema: &'a Value, at: &str, name: &str) -> Result<String, SchemaError> {
        let obj = match schema {
            Value::Bool(true) => return Ok(self.builtin("json-value")),
            Value::Bool(false) => return Err(err(at, "the schema `false` allows no value")),
            Value::Object(o) => o,
            _ => return Err(err(at, "a schema must be an object or a boolean")),
        };
        for k in obj.keys() {
            if UNSUPPORTED.contains(&k.as_str()) {
                return Err(err(
                    at,
                    format!("the keyword {k:?} is not supported: a grammar cannot enforce it; remove it or check it after generation"),
                ));
            }
        }
        if let Some(r) = obj.get("$ref") {
            only_annotations_beside(obj, "$ref", at)?;
            return self.reference(r, at);
        }
        for key in ["anyOf", "oneOf"] {
            if let Some(alts) = obj.get(key) {
                only_annotations_beside(obj, key, at)?;
                let body = self.alternatives(alts, &format!("{at}/{key}"), name)?;
                return Ok(self.rules.add(name, body));
            }
        }
        if let Some(v) = obj.get("const") {
            return Ok(self.rules.add(name, const_literal(v)));
        }
        if let Some(vals) = obj.get("enum") {
            let Value::Array(vals) = vals else {
                return Err(err(at, "\"enum\" must be an array"));
            };
            if vals.is_empty() {
                return Err(err(at, "\"enum\" is empty: no value is allowed"));
            }
            let alts: Vec<String> = vals.iter().map(const_literal).collect();
            return Ok(self.rules.add(name, alts.join(" | ")));
        }
        match obj.get("type") {
            None => self.typed(obj, None, at, name),
            Some(Value::String(t)) => self.typed(obj, Some(t), at, name),
            Some(Value::Array(types)) if !types.is_empty() => {
                let mut alts = Vec::new();
                for (i, t) in types.iter().enumerate() {
                    let Value::String(t) = t else {
                        return Err(err(at, "\"type\" must be a string or an array of strings"));
                    };
                    alts.push(self.typed(obj, Some(t), at, &format!("{name}-{i}"))?);
                }
                Ok(self.rules.add(name, alts.join(" | ")))
            }
            Some(Value::Array(_)) => Err(err(at, "\"type\" is an empty array")),
            Some(_) => Err(err(at, "\"type\" must be a string or an array of strings")),
        }
    }

    /// A schema without `$ref`, `anyOf`, `oneOf`, `const` and `enum`, as
    /// the type `ty` (one of its `type`s, or none).
    fn typed(
        &mut self,
        obj: &'a Map<String, Value>,
        ty: Option<&str>,
        at: &str,
        name: &str,
    ) -> Result<String, SchemaError> {
        let has_props =
            obj.contains_key("properties") || obj.get("additionalProperties").is_some_and(|a| *a != Value::Bool(true));
        match ty {
            None if has_props => self.object(obj, at, name),
            None if obj.contains_key("allOf") => self.all_of(obj, at, name),
            None if obj.contains_key("items") || obj.contains_key("prefixItems") => self.array(obj, at, name),
            None if ["pattern", "minLength", "maxLength"]
                .iter()
                .any(|k| obj.contains_key(*k))
                || obj
                    .get("format")
                    .and_then(Value::as_str)
                    .is_some_and(|f| format_rule(f).is_some()) =>
            {
                self.string(obj, at, name)
            }
            None => {
                if let Some(k) = [
                    "minimum",
                    "maximum",
                    "exclusiveMinimum",
                    "exclusiveMaximum",
                    "minItems",
                    "maxItems",
                    "required",
                ]
                .iter()
                .find(|k| obj.contains_key(**k))
                {
                    return Err(err(
                        at,
                        format!("{k:?} without a \"type\" would not be enforced; add the type it is meant for"),
                    ));
                }
                let v = self.builtin("json-value");
                Ok(self.rules.add(name, v))
            }
            Some("object") if !has_props && obj.contains_key("allOf") => self.all_of(obj, at, name),
            Some("object") => self.object(obj, at, name),
            Some("array") => self.array(obj, at, name),
            Some("string") => {
                if obj.contains_key("allOf") {
                    return Err(err(
                        at,
                        "\"allOf\" of string schemas is not supported; merge them into one",
                    ));
                }
                self.string(obj, at, name)
            }
            Some("integer") => self.integer(obj, at, name),
            Some("number") => self.number(obj, at, name),
            Some("boolean") => {
                let n = self.builtin("json-boolean");
                Ok(self.rules.add(name, n))
            }
            Some("null") => {
                let n = self.builtin("json-null");
                Ok(self.rules.add(name, n))
            }
            Some(other) => Err(err(at, format!("unknown type {other:?}"))),
        }
    }

    fn reference(&mut self, r: &Value, at: &str) -> Result<String, SchemaError> {
        let Value::String(r) = r else {
            return Err(err(at, "\"$ref\" must be a string"));
        };
        if let Some(rule) = self.refs.get(r) {
            return Ok(rule.clone());
        }
        let Some(pointer) = r.strip_prefix('#') else {
            return Err(err(
                at,
                format!("$ref {r:?} points outside this schema; only references into the same document (#/$defs/...) are supported"),
            ));
        };
        let target = if pointer.is_empty() {
            Some(self.root)
        } else if pointer.starts_with('/') {
            self.root.pointer(pointer)
        } else {
            return Err(err(
                at,
                format!("$ref {r:?} is not a JSON pointer (#/$defs/NAME); anchors are not supported"),
            ));
        };
        let target = target.ok_or_else(|| err(at, format!("$ref {r:?} points to nothing in this schema")))?;
        let rule = self.rules.reserve(&format!("ref{pointer}"));
        self.refs.insert(r.clone(), rule.clone());
        let body = self.visit(target, r, &format!("{rule}-body"))?;
        self.rules.define(&rule, body);
        Ok(rule)
    }

    fn alternatives(&mut self, alts: &'a Value, at: &str, name: &str) -> Result<String, SchemaError> {
        let Value::Array(alts) = alts else {
            return Err(err(at, "must be an array of schemas"));
        };
        if alts.is_empty() {
            return Err(err(at, "is empty: no value is allowed"));
        }
        let mut out = Vec::new();
        for (i, a) in alts.iter().enumerate() {
            out.push(self.visit(a, &format!("{at}/{i}"), &format!("{name}-{i}"))?);
        }
        Ok(out.join(" | "))
    }

    fn object(&mut self, obj: &'a Map<String, Value>, at: &str, name: &str) -> Result<String, SchemaError> {
        if obj.contains_key("allOf") {
            return Err(err(
                at,
                "\"allOf\" beside \"properties\" is not supported; move the properties into allOf",
            ));
        }
        let props = match obj.get("properties") {
            None => Vec::new(),
            Some(Value::Object(p)) => p.iter().collect(),
            Some(_) => return Err(err(at, "\"properties\" must be an object")),
        };
        let required = required_names(obj, at)?;
        for r in &required {
            if !props.iter().any(|(k, _)| *k == r) {
                return Err(err(
                    at,
                    format!("required property {r:?} is not in \"properties\"; declare its schema there"),
                ));
            }
        }
        let additional = match obj.get("additionalProperties") {
            Some(Value::Bool(false)) => None,
            Some(Value::Bool(true)) => Some(None),
            None if props.is_empty() => Some(None),
            None => None,
            Some(s @ Value::Object(_)) => Some(Some(s)),
            Some(_) => return Err(err(at, "\"additionalProperties\" must be a boolean or a schema")),
        };
        if props.is_empty() && matches!(additional, Some(None)) {
            let o = self.builtin("json-object");
            return Ok(self.rules.add(name, o));
        }
        let props: Vec<(String, &'a Value, bool)> = props
            .into_iter()
            .map(|(k, v)| (k.clone(), v, required.contains(k)))
            .collect();
        let body = self.object_rule(&props, additional, at, name)?;
        Ok(self.rules.add(name, body))
    }

    /// `props`: (name, schema, required) in schema order. `additional`:
    /// None for no other keys, Some(None) for any value, Some(Some(s)) for
    /// values of schema `s`.
    fn object_rule(
        &mut self,
        props: &[(String, &'a Value, bool)],
        additional: Option<Option<&'a Value>>,
        at: &str,
        name: &str,
    ) -> Result<String, SchemaError> {
        let space = self.builtin(SPACE);
        let mut kv: HashMap<String, String> = HashMap::new();
        let (mut req, mut opt) = (Vec::new(), Vec::new());
        for (k, schema, is_req) in props {
            let value = self.visit(
                schema,
                &format!("{at}/properties/{}", escape_pointer(k)),
                &format!("{name}-{k}"),
            )?;
            let key = literal(&Value::String(k.clone()).to_string());
            let rule = self.rules.add(
                &format!("{name}-{k}-kv"),
                format!("{key} {space} \":\" {space} {value}"),
            );
            kv.insert(k.clone(), rule);
            if *is_req {
                req.push(k.clone());
            } else {
                opt.push(k.clone());
            }
        }
        // "*": the other keys.
        if let Some(value_schema) = additional {
            let value = match value_schema {
                None => self.builtin("json-value"),
                Some(s) => self.visit(
                    s,
                    &format!("{at}/additionalProperties"),
                    &format!("{name}-additional-value"),
                )?,
            };
            let key = if props.is_empty() {
                self.builtin("json-string")
            } else {
                let names: Vec<&str> = props.iter().map(|(k, _, _)| k.as_str()).collect();
                let body = self.not_strings(&names);
                self.rules.add(&format!("{name}-additional-k"), body)
            };
            let rule = self
                .rules
                .add(&format!("{name}-additional-kv"), format!("{key} \":\" {space} {value}"));
            kv.insert("*".into(), rule);
            opt.push("*".into());
        }
        if req.is_empty() && opt.is_empty() {
            return Ok(format!("\"{{\" {space} \"}}\""));
        }
        let mut body = format!("\"{{\" {space} ");
        body.push_str(
            &req.iter()
                .map(|k| kv[k].clone())
                .collect::<Vec<_>>()
                .join(&format!(" \",\" {space} ")),
        );
        if !opt.is_empty() {
            // Any ordered, non-empty subset of the optional keys; the other
            // keys ("*") come last, any number of them.
            let mut alts = Vec::new();
            for i in 0..opt.len() {
                let k = &opt[i];
                let first = if k == "*" {
                    format!("{} ( \",\" {space} {} )*", kv[k], kv[k])
                } else {
                    kv[k].clone()
                };
                let rest = self.optional_tail(&opt[i + 1..], &kv, name);
                alts.push(match rest {
                    Some(r) => format!("{first} {r}"),
                    None => first,
                });
            }
            let alts = alts.join(" | ");
            if req.is_empty() {
                body.push_str(&format!("( {alts} )?"));
            } else {
                body.push_str(&format!(" ( \",\" {space} ( {alts} ) )?"));
            }
        }
        body.push_str(&format!(" {space} \"}}\""));
        Ok(body)
    }

    /// A rule for "each of `keys` or not, in order, each after a comma".
    fn optional_tail(&mut self, keys: &[String], kv: &HashMap<String, String>, name: &str) -> Option<String> {
        let (k, rest) = keys.split_first()?;
        let quant = if k == "*" { "*" } else { "?" };
        let mut body = format!("( \",\" {SPACE} {} ){quant}", kv[k]);
        if let Some(r) = self.optional_tail(rest, kv, name) {
            body.push(' ');
            body.push_str(&r);
        }
        Some(self.rules.add(&format!("{name}-{k}-rest"), body))
    }

    /// A JSON string whose characters spell none of `names`.
    fn not_strings(&mut self, names: &[&str]) -> String {
        let ch = self.builtin("json-char");
        #[derive(Default)]
        struct Trie {
            children: std::collections::BTreeMap<char, Trie>,
            end: bool,
        }
        let mut trie = Trie::default();
        for n in names {
            let mut t = &mut trie;
            for c in n.chars() {
                t = t.children.entry(c).or_default();
            }
            t.end = true;
        }
        fn walk(t: &Trie, ch: &str) -> String {
            if t.children.is_empty() {
                // After a whole listed name: at least one more character.
                return format!("{ch}+");
            }
            let mut alts = Vec::new();
            // Any other first character, then any characters. As in
            // llama.cpp, that first character is only kept from being a
            // quote or a listed continuation.
            let mut excluded: Vec<(char, char)> = vec![('"', '"')];
            for (c, sub) in &t.children {
                alts.push(format!("{} ( {} )", class(&[(*c, *c)], false), walk(sub, ch)));
                excluded.push((*c, *c));
            }
            alts.push(format!("{} {ch}*", class(&excluded, true)));
            alts.join(" | ")
        }
        // The empty key is allowed unless it is listed. Like llama.cpp's
        // rule (whose language this keeps), a key that stops inside a
        // listed name (`a` beside `ab`) is refused too: stricter than the
        // schema, never looser.
        let empty = if trie.end { "" } else { "?" };
        format!("\"\\\"\" ( {} ){empty} \"\\\"\"", walk(&trie, &ch))
    }

    fn all_of(&mut self, obj: &'a Map<String, Value>, at: &str, name: &str) -> Result<String, SchemaError> {
        let Some(Value::Array(parts)) = obj.get("allOf") else {
            return Err(err(at, "\"allOf\" must be an array of schemas"));
        };
        let mut props: Vec<(String, &'a Value, bool)> = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let here = format!("{at}/allOf/{i}");
            let resolved = self.resolve(part, &here)?;
            let Some(o) = resolved.as_object() else {
                return Err(err(&here, "\"allOf\" is supported for object schemas only"));
            };
            // An anyOf part: its alternatives' properties become optional.
            let (objects, required): (Vec<&'a Map<String, Value>>, bool) = match o.get("anyOf").or(o.get("oneOf")) {
                Some(Value::Array(alts)) => {
                    let mut v = Vec::new();
                    for (j, a) in alts.iter().enumerate() {
                        let here = format!("{here}/anyOf/{j}");
                        let a = self.resolve(a, &here)?;
                        v.push(
                            a.as_object()
                                .ok_or_else(|| err(&here, "\"allOf\" is supported for object schemas only"))?,
                        );
                    }
                    (v, false)
                }
                _ => (vec![o], true),
            };
            for o in objects {
                if !o.contains_key("properties") || o.get("type").is_some_and(|t| t != "object") {
                    return Err(err(
                        &here,
                        "\"allOf\" is supported for object schemas with \"properties\" only",
                    ));
                }
                if o.get("additionalProperties").is_some_and(|a| *a != Value::Bool(false)) {
                    return Err(err(&here, "\"additionalProperties\" inside \"allOf\" is not supported"));
                }
                let req = required_names(o, &here)?;
                if let Some(Value::Object(p)) = o.get("properties") {
                    for (k, v) in p {
                        props.push((k.clone(), v, required && req.contains(k)));
                    }
                }
            }
        }
        let body = self.object_rule(&props, None, at, name)?;
        Ok(self.rules.add(name, body))
    }

    /// Follows `$ref`s (for allOf, which merges its parts).
    fn resolve(&self, mut v: &'a Value, at: &str) -> Result<&'a Value, SchemaError> {
        for _ in 0..32 {
            let Some(Value::String(r)) = v.get("$ref") else {
                return Ok(v);
            };
            v = r
                .strip_prefix('#')
                .and_then(|p| {
                    if p.is_empty() {
                        Some(self.root)
                    } else {
                        self.root.pointer(p)
                    }
                })
                .ok_or_else(|| err(at, format!("$ref {r:?} points to nothing in this schema")))?;
        }
        Err(err(at, "$ref chain is too long"))
    }

    fn array(&mut self, obj: &'a Map<String, Value>, at: &str, name: &str) -> Result<String, SchemaError> {
        let space = self.builtin(SPACE);
        let tuple = match (obj.get("prefixItems"), obj.get("items")) {
            (Some(Value::Array(t)), None | Some(Value::Bool(false))) => Some((t, "prefixItems")),
            (Some(_), Some(_)) => {
                return Err(err(
                    at,
                    "\"prefixItems\" with more \"items\" is not supported; list every item",
                ))
            }
            (None, Some(Value::Array(t))) => Some((t, "items")),
            (Some(_), None) => return Err(err(at, "\"prefixItems\" must be an array of schemas")),
            _ => None,
        };
        if let Some((items, key)) = tuple {
            let mut parts = Vec::new();
            for (i, s) in items.iter().enumerate() {
                parts.push(self.visit(s, &format!("{at}/{key}/{i}"), &format!("{name}-tuple-{i}"))?);
            }
            let body = format!(
                "\"[\" {space} {} {space} \"]\"",
                parts.join(&format!(" \",\" {space} "))
            );
            return Ok(self.rules.add(name, body));
        }
        let min = count(obj, "minItems", at)?.unwrap_or(0);
        let max = count(obj, "maxItems", at)?;
        if max.is_some_and(|m| m < min) {
            return Err(err(at, "\"maxItems\" is below \"minItems\": no array is allowed"));
        }
        let items = match obj.get("items") {
            None | Some(Value::Bool(true)) => None,
            Some(Value::Bool(false)) if min > 0 => {
                return Err(err(at, "\"items\": false with \"minItems\" above 0 allows no array"))
            }
            Some(Value::Bool(false)) => Some(None),
            Some(s) => Some(Some(s)),
        };
        let item = match items {
            None if min == 0 && max.is_none() => {
                let a = self.builtin("json-array");
                return Ok(self.rules.add(name, a));
            }
            None => self.builtin("json-value"),
            // items: false: only the empty array.
            Some(None) => return Ok(self.rules.add(name, format!("\"[\" {space} {space} \"]\""))),
            Some(Some(s)) => self.visit(s, &format!("{at}/items"), &format!("{name}-item"))?,
        };
        let body = format!(
            "\"[\" {space} {} {space} \"]\"",
            repeat_separated(&item, &format!("\",\" {space}"), min, max)
        );
        Ok(self.rules.add(name, body))
    }

    fn string(&mut self, obj: &'a Map<String, Value>, at: &str, name: &str) -> Result<String, SchemaError> {
        let min = count(obj, "minLength", at)?;
        let max = count(obj, "maxLength", at)?;
        let format = match obj.get("format") {
            None => None,
            Some(Value::String(f)) => Some(f.as_str()),
            Some(_) => return Err(err(at, "\"format\" must be a string")),
        };
        let fmt_rule = format.and_then(format_rule);
        let lengths = min.is_some() || max.is_some();
        if let Some(p) = obj.get("pattern") {
            let Value::String(p) = p else {
                return Err(err(at, "\"pattern\" must be a string"));
            };
            if lengths || fmt_rule.is_some() {
                return Err(err(
                    at,
                    "\"pattern\" with \"minLength\"/\"maxLength\" or a \"format\" is not supported; put the length into the pattern",
                ));
            }
            let body = pattern::pattern_rule(p).map_err(|why| err(at, format!("pattern {p:?}: {why}")))?;
            return Ok(self.rules.add(name, body));
        }
        if let Some(f) = fmt_rule {
            if lengths {
                return Err(err(at, "\"format\" with \"minLength\"/\"maxLength\" is not supported"));
            }
            let r = self.builtin(f);
            return Ok(self.rules.add(name, r));
        }
        if lengths {
            let (min, max) = (min.unwrap_or(0), max);
            if max.is_some_and(|m| m < min) {
                return Err(err(at, "\"maxLength\" is below \"minLength\": no string is allowed"));
            }
            let ch = self.builtin("json-char");
            let body = format!("\"\\\"\" {} \"\\\"\"", gbnf::repeat(&ch, min, max));
            return Ok(self.rules.add(name, body));
        }
        let s = self.builtin("json-string");
        Ok(self.rules.add(name, s))
    }

    /// A number; with bounds (whole numbers only), a decimal without an
    /// exponent inside them. llama.cpp's converter ignores a number's
    /// bounds; a grammar that let them through would fail the job later.
    fn number(&mut self, obj: &'a Map<String, Value>, at: &str, name: &str) -> Result<String, SchemaError> {
        let bound = |k: &str| -> Result<Option<i64>, SchemaError> {
            match obj.get(k) {
                None => Ok(None),
                Some(Value::Number(n)) => match n.as_i64() {
                    Some(i) => Ok(Some(i)),
                    None => match n.as_f64() {
                        Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Some(f as i64)),
                        _ => Err(err(
                            at,
                            format!(
                                "{k:?} of a \"number\" must be a whole number for a grammar to enforce it (it is {n})"
                            ),
                        )),
                    },
                },
                Some(_) => Err(err(at, format!("{k:?} must be a number"))),
            }
        };
        let min = match bound("minimum")? {
            Some(m) => Some((m, true)),
            None => bound("exclusiveMinimum")?.map(|m| (m, false)),
        };
        let max = match bound("maximum")? {
            Some(m) => Some((m, true)),
            None => bound("exclusiveMaximum")?.map(|m| (m, false)),
        };
        if min.is_none() && max.is_none() {
            let n = self.builtin("json-number");
            return Ok(self.rules.add(name, n));
        }
        let body = range::number_range(min, max).ok_or_else(|| {
            err(
                at,
                "the number bounds leave no value (the minimum is above the maximum)",
            )
        })?;
        Ok(self.rules.add(name, body))
    }

    fn integer(&mut self, obj: &'a Map<String, Value>, at: &str, name: &str) -> Result<String, SchemaError> {
        let bound = |k: &str, up: bool| -> Result<Option<i64>, SchemaError> {
            match obj.get(k) {
                None => Ok(None),
                Some(Value::Number(n)) => {
                    if let Some(i) = n.as_i64() {
                        Ok(Some(i))
                    } else {
                        let f = n.as_f64().unwrap_or(f64::NAN);
                        let r = if up { f.ceil() } else { f.floor() };
                        if r.is_finite() && r.abs() < 9.0e18 {
                            Ok(Some(r as i64))
                        } else {
                            Err(err(
                                at,
                                format!("{k:?} is out of the range of integers a grammar can bound"),
                            ))
                        }
                    }
                }
                Some(_) => Err(err(at, format!("{k:?} must be a number"))),
            }
        };
        let min = match bound("minimum", true)? {
            Some(m) => Some(m),
            None => bound("exclusiveMinimum", false)?.map(|m| m.saturating_add(1)),
        };
        let max = match bound("maximum", false)? {
            Some(m) => Some(m),
            None => bound("exclusiveMaximum", true)?.map(|m| m.saturating_sub(1)),
        };
        if min.is_none() && max.is_none() {
            let n = self.builtin("json-integer");
            return Ok(self.rules.add(name, n));
        }
        let body = range::integer_range(min, max).ok_or_else(|| {
            err(
                at,
                "the integer bounds leave no value (the minimum is above the maximum)",
            )
        })?;
        Ok(self.rules.add(name, body))
    }
}

/// The keywords this converter applies.
const APPLIED: &[&str] = &[
    "$ref",
    "anyOf",
    "oneOf",
    "allOf",
    "type",
    "const",
    "enum",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "prefixItems",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "pattern",
    "format",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
];

/// Refuses constraints beside a keyword that replaces the whole schema
/// (`$ref`, `anyOf`, `oneOf`): they would not be applied. Annotations and
/// keywords that are not JSON Schema's (`discriminator`, `x-...`) may stay.
fn only_annotations_beside(obj: &Map<String, Value>, key: &str, at: &str) -> Result<(), SchemaError> {
    match obj.keys().find(|k| *k != key && APPLIED.contains(&k.as_str())) {
        Some(k) => Err(err(
            at,
            format!("{k:?} beside {key:?} is not supported: it would not be applied; move it into the {key} target(s)"),
        )),
        None => Ok(()),
    }
}

fn required_names(obj: &Map<String, Value>, at: &str) -> Result<Vec<String>, SchemaError> {
    match obj.get("required") {
        None => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| err(at, "\"required\" must be an array of strings")),
        Some(_) => Err(err(at, "\"required\" must be an array of strings")),
    }
}

fn count(obj: &Map<String, Value>, key: &str, at: &str) -> Result<Option<u64>, SchemaError> {
    match obj.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .filter(|&n| n <= 100_000)
            .map(Some)
            .ok_or_else(|| err(at, format!("{key:?} must be an integer from 0 to 100000"))),
    }
}

/// The built-in rule of a string `format`. Other formats are annotations
/// (JSON Schema 2020-12), as in llama.cpp: the string is any string.
fn format_rule(format: &str) -> Option<&'static str> {
    match format {
        "date" => Some("fmt-date-string"),
        "time" => Some("fmt-time-string"),
        "date-time" => Some("fmt-date-time-string"),
        "uuid" | "uuid1" | "uuid2" | "uuid3" | "uuid4" | "uuid5" => Some("fmt-uuid-string"),
        _ => None,
    }
}

/// The GBNF literal of a JSON value written compactly (for const, enum).
fn const_literal(v: &Value) -> String {
    literal(&v.to_string())
}

fn escape_pointer(k: &str) -> String {
    k.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn g(s: Value) -> String {
        json_schema_to_gbnf(&s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn every_grammar_starts_at_root_and_defines_what_it_uses() {
        for s in [
            json!({}),
            json!(true),
            json!({"type": "string"}),
            json!({"type": "object", "properties": {"a": {"type": "integer", "minimum": 1, "maximum": 12}, "b": {"$ref": "#/$defs/b"}}, "required": ["a"], "$defs": {"b": {"type": "array", "items": {"$ref": "#/$defs/b"}, "maxItems": 3}}}),
            json!({"type": ["string", "null"], "format": "date-time"}),
            json!({"anyOf": [{"const": 1}, {"enum": ["x", null]}]}),
            json!({"type": "object", "properties": {"k": {"type": "string", "pattern": "^[a-z]{2,4}$"}}, "additionalProperties": {"type": "number"}}),
        ] {
            let text = g(s.clone());
            assert!(text.starts_with("root ::= "), "{s}: {text}");
            let defined: Vec<&str> = text.lines().filter_map(|l| l.split(" ::= ").next()).collect();
            for line in text.lines() {
                let body = line.split_once(" ::= ").unwrap().1;
                for word in rule_refs(body) {
                    assert!(defined.contains(&word.as_str()), "{s}: {word} undefined in\n{text}");
                }
            }
        }
    }

    /// The rule names a GBNF body uses (outside literals and classes).
    fn rule_refs(body: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut it = body.chars().peekable();
        let mut word = String::new();
        while let Some(c) = it.next() {
            let close = match c {
                '"' => Some('"'),
                '[' => Some(']'),
                _ => None,
            };
            if let Some(close) = close {
                while let Some(d) = it.next() {
                    if d == '\\' {
                        it.next();
                    } else if d == close {
                        break;
                    }
                }
            }
            if c.is_ascii_alphanumeric() || c == '-' {
                word.push(c);
            } else if !word.is_empty() {
                out.push(std::mem::take(&mut word));
            }
        }
        if !word.is_empty() {
            out.push(word);
        }
        out.retain(|w| w.starts_with(|c: char| c.is_ascii_alphabetic()));
        out
    }

    #[test]
    fn properties_keep_the_schema_order() {
        let text = g(
            json!({"type": "object", "properties": {"zeta": {"type": "string"}, "alpha": {"type": "string"}}, "required": ["alpha", "zeta"]}),
        );
        let root = text.lines().next().unwrap();
        assert!(root.find("zeta").unwrap() < root.find("alpha").unwrap(), "{text}");
    }

    #[test]
    fn refuses_what_it_cannot_enforce_and_says_where() {
        for (s, at, why) in [
            (json!({"type": "number", "minimum": 0.5}), "#", "whole number"),
            (
                json!({"type": "number", "minimum": 2, "exclusiveMaximum": 2}),
                "#",
                "no value",
            ),
            (json!({"type": "array", "uniqueItems": true}), "#", "uniqueItems"),
            (
                json!({"type": "object", "properties": {"a": {"type": "string", "pattern": "[a-z]"}}}),
                "#/properties/a",
                "anchored",
            ),
            (
                json!({"type": "object", "properties": {"a": {"not": {}}}}),
                "#/properties/a",
                "\"not\"",
            ),
            (json!({"$ref": "other.json#/x"}), "#", "outside"),
            (json!({"$ref": "#/$defs/none"}), "#", "points to nothing"),
            (
                json!({"type": "object", "properties": {}, "required": ["x"]}),
                "#",
                "required property \"x\"",
            ),
            (json!({"type": "integer", "minimum": 5, "maximum": 4}), "#", "no value"),
            (json!({"enum": []}), "#", "empty"),
            (
                json!({"$ref": "#/$defs/a", "type": "object", "$defs": {"a": {}}}),
                "#",
                "beside \"$ref\"",
            ),
            (json!({"minimum": 3}), "#", "without a \"type\""),
            (json!(false), "#", "no value"),
        ] {
            let e = json_schema_to_gbnf(&s).expect_err(&s.to_string());
            assert_eq!(e.at, at, "{s}: {e}");
            assert!(e.reason.contains(why), "{s}: {e}");
        }
    }

    #[test]
    fn all_of_keeps_each_parts_required_list() {
        // llama.cpp's converter makes every property of an allOf part
        // required; the schema says only `a` is.
        let text = g(json!({"allOf": [
            {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
            {"type": "object", "properties": {"b": {"type": "integer"}}}
        ]}));
        let root = text.lines().next().unwrap();
        assert!(root.contains("root-a-kv ( \",\" space ( root-b-kv ) )?"), "{text}");
    }

    #[test]
    fn annotations_and_foreign_keywords_beside_ref_and_one_of_are_skipped() {
        // The rules a grammar defines for the schema itself (not the
        // built-in json-* and space rules).
        fn own_rules(text: &str) -> Vec<&str> {
            text.lines()
                .filter(|l| !l.starts_with("json-") && !l.starts_with("space "))
                .collect()
        }

        // OpenAPI's `nullable` is foreign here: it adds no null.
        let text =
            g(json!({"$ref": "#/$defs/a", "description": "d", "nullable": true, "$defs": {"a": {"type": "string"}}}));
        assert_eq!(
            own_rules(&text),
            [
                "root ::= ref-defs-a",
                "ref-defs-a ::= ref-defs-a-body",
                "ref-defs-a-body ::= json-string",
            ],
            "{text}"
        );
        assert!(!text.contains("null"), "{text}");
        assert_eq!(
            text,
            g(json!({"$ref": "#/$defs/a", "$defs": {"a": {"type": "string"}}}))
        );

        let text = g(
            json!({"oneOf": [{"type": "object", "properties": {"kind": {"const": "a"}}}], "discriminator": {"propertyName": "kind"}, "title": "T"}),
        );
        assert_eq!(
            own_rules(&text),
            [
                "root ::= root-0",
                r#"root-0 ::= "{" space ( root-0-kind-kv )? space "}""#,
                r#"root-0-kind ::= "\"a\"""#,
                r#"root-0-kind-kv ::= "\"kind\"" space ":" space root-0-kind"#,
            ],
            "{text}"
        );
        assert_eq!(
            text,
            g(json!({"oneOf": [{"type": "object", "properties": {"kind": {"const": "a"}}}]}))
        );
    }

    #[test]
    fn recursive_refs_end() {
        let text = g(
            json!({"$ref": "#/$defs/node", "$defs": {"node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/node"}}}}}),
        );
        assert!(text.contains("ref-defs-node ::="), "{text}");
    }
}
