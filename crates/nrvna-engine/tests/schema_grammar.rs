//! `wrk` writes grammar.gbnf with nrvna-schema's converter (Rust, no
//! llama.cpp); a C++ daemon, or an older one of ours, derives the grammar
//! with llama.cpp's own converter. Both must constrain a job to the same
//! texts. For every schema here, the two grammars are loaded into llama.cpp
//! (ours must parse) and fed the same sample texts token by token: generated
//! instances of the schema, with the whitespace a model may put between
//! tokens, and mutations of them (a character dropped, added or replaced,
//! a truncation). Both grammars must accept or refuse each sample alike.
//!
//! The samples come from a seeded generator (seed printed on failure), so a
//! failure reproduces. Needs the model of `scripts/fetch-model.sh` (for its
//! vocabulary: llama.cpp's grammar sampler works on tokens).

mod common;

use std::sync::OnceLock;

use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use nrvna_engine::Model;
use serde_json::{json, Value};

fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| Model::load(&common::model_path(), 0, None).expect("load the test model"))
}

/// Whether llama.cpp's grammar sampler lets the model write exactly `text`
/// and then stop: every token of it is allowed in turn, then end of text.
fn accepts(grammar: &str, text: &str) -> bool {
    let m = model();
    let mut s = LlamaSampler::grammar(&m.weights.llama, grammar, "root")
        .unwrap_or_else(|e| panic!("llama.cpp refused the grammar ({e}):\n{grammar}"));
    let vocab = m.weights.llama.vocab();
    let allowed = |s: &mut LlamaSampler, tok| {
        let mut arr = LlamaTokenDataArray::new(vec![LlamaTokenData::new(tok, 0.0, 0.0)], false);
        s.apply(&mut arr);
        arr.data[0].logit() != f32::NEG_INFINITY
    };
    for tok in vocab.tokenize(text.as_bytes(), false, false) {
        if !allowed(&mut s, tok) || s.try_accept(tok).is_err() {
            return false;
        }
    }
    allowed(&mut s, vocab.eos())
}

/// A small seeded PRNG (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn coin(&mut self) -> bool {
        self.below(2) == 0
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

/// Writes instances of a schema as JSON text, with random whitespace where
/// a model may put it (after `{ [ , :` and before `} ]`).
struct Gen<'a> {
    root: &'a Value,
    rng: Rng,
}

impl Gen<'_> {
    fn ws(&mut self) -> &'static str {
        const WS: [&str; 7] = ["", "", "", " ", "\n", "\n  ", "\n\n\t"];
        WS[self.rng.below(WS.len() as u64) as usize]
    }

    fn value(&mut self, s: &Value, depth: u32) -> String {
        let Some(o) = s.as_object() else {
            return self.any(depth);
        };
        if let Some(Value::String(r)) = o.get("$ref") {
            let target = self.root.pointer(&r[1..]).expect("ref");
            return self.value(target, depth + 1);
        }
        for k in ["anyOf", "oneOf"] {
            if let Some(Value::Array(alts)) = o.get(k) {
                let a = self.rng.pick(alts).clone();
                return self.value(&a, depth + 1);
            }
        }
        if let Some(Value::Array(types)) = o.get("type") {
            let mut one = o.clone();
            one.insert("type".into(), self.rng.pick(types).clone());
            return self.value(&Value::Object(one), depth);
        }
        if let Some(c) = o.get("const") {
            return c.to_string();
        }
        // Patterns: the schema's own examples (an annotation both converters skip).
        if let Some(Value::Array(e)) = o.get("examples") {
            return self.rng.pick(e).to_string();
        }
        if let Some(Value::Array(e)) = o.get("enum") {
            return self.rng.pick(e).to_string();
        }
        if let Some(Value::Array(parts)) = o.get("allOf") {
            let mut props = Vec::new();
            for p in parts {
                let p = match p.get("$ref").and_then(Value::as_str) {
                    Some(r) => self.root.pointer(&r[1..]).expect("ref"),
                    None => p,
                };
                // An anyOf part: its alternatives' properties are optional.
                let (objs, required): (Vec<&Value>, bool) = match p.get("anyOf").and_then(Value::as_array) {
                    Some(alts) => (alts.iter().collect(), false),
                    None => (vec![p], true),
                };
                for o in objs {
                    let req: Vec<&str> = o["required"]
                        .as_array()
                        .map(|a| a.iter().filter_map(Value::as_str).collect())
                        .unwrap_or_default();
                    for (k, v) in o["properties"].as_object().expect("allOf of objects") {
                        props.push((k.clone(), v.clone(), required && req.contains(&k.as_str())));
                    }
                }
            }
            return self.object(&props, None, depth);
        }
        let ty = o.get("type").and_then(Value::as_str);
        match ty {
            Some("object") | None if o.contains_key("properties") || o.contains_key("additionalProperties") => {
                let req: Vec<&str> = o
                    .get("required")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let props: Vec<(String, Value, bool)> = o
                    .get("properties")
                    .and_then(Value::as_object)
                    .map(|p| {
                        p.iter()
                            .map(|(k, v)| (k.clone(), v.clone(), req.contains(&k.as_str())))
                            .collect()
                    })
                    .unwrap_or_default();
                let extra = match o.get("additionalProperties") {
                    Some(Value::Bool(false)) => None,
                    None if !props.is_empty() => None,
                    Some(Value::Bool(true)) | None => Some(json!({})),
                    Some(s) => Some(s.clone()),
                };
                self.object(&props, extra, depth)
            }
            Some("object") => self.object(&[], Some(json!({})), depth),
            Some("array") | None if o.contains_key("items") || o.contains_key("prefixItems") || ty.is_some() => {
                let (o1, o2) = (self.ws(), self.ws());
                if let Some(Value::Array(t)) = o.get("prefixItems").or(o.get("items")) {
                    let items: Vec<String> = t.iter().map(|s| self.value(s, depth + 1)).collect();
                    return self.seq('[', ']', items, o1, o2);
                }
                let min = o.get("minItems").and_then(Value::as_u64).unwrap_or(0);
                let max = o.get("maxItems").and_then(Value::as_u64).unwrap_or(min + 3);
                let n = if depth > 3 {
                    min
                } else {
                    min + self.rng.below(max - min + 1)
                };
                let item = o.get("items").cloned().unwrap_or(json!({}));
                let items: Vec<String> = (0..n).map(|_| self.value(&item, depth + 1)).collect();
                self.seq('[', ']', items, o1, o2)
            }
            Some("string") => self.string(o),
            None if ["pattern", "minLength", "maxLength", "format"]
                .iter()
                .any(|k| o.contains_key(*k)) =>
            {
                self.string(o)
            }
            None => self.any(depth),
            Some("integer") => self.integer(o),
            Some("number") => self
                .rng
                .pick(&["0", "-1", "3.25", "1e5", "-0.5E-3", "12345", "7.0"])
                .to_string(),
            Some("boolean") => self.rng.pick(&["true", "false"]).to_string(),
            Some("null") => "null".into(),
            Some(t) => panic!("type {t}"),
        }
    }

    fn object(&mut self, props: &[(String, Value, bool)], extra: Option<Value>, depth: u32) -> String {
        let mut items = Vec::new();
        // The grammars take the required properties first, then the
        // optional ones, each in schema order.
        let ordered = props.iter().filter(|p| p.2).chain(props.iter().filter(|p| !p.2));
        for (k, v, req) in ordered {
            if *req || (depth < 4 && self.rng.coin()) {
                let (a, b) = (self.ws(), self.value(v, depth + 1));
                items.push(format!("{}:{a}{b}", Value::String(k.clone())));
            }
        }
        if let Some(x) = &extra {
            for i in 0..self.rng.below(if depth < 3 { 3 } else { 1 }) {
                let (a, b) = (self.ws(), self.value(x, depth + 1));
                items.push(format!("\"zz_extra{i}\":{a}{b}"));
            }
        }
        // An object that can hold no key has one place for whitespace.
        let (o1, o2) = if props.is_empty() && extra.is_none() {
            (self.ws(), "")
        } else {
            (self.ws(), self.ws())
        };
        self.seq('{', '}', items, o1, o2)
    }

    fn seq(&mut self, open: char, close: char, items: Vec<String>, o1: &str, o2: &str) -> String {
        let mut out = format!("{open}{o1}");
        for (i, it) in items.iter().enumerate() {
            if i > 0 {
                out.push(',');
                out.push_str(self.ws());
            }
            out.push_str(it);
        }
        out.push_str(o2);
        out.push(close);
        out
    }

    fn any(&mut self, depth: u32) -> String {
        let pick = if depth > 3 {
            self.rng.below(4)
        } else {
            self.rng.below(6)
        };
        match pick {
            0 => self.rng.pick(&["1", "-2.5", "1e3"]).to_string(),
            1 => self.rng.pick(&["true", "false", "null"]).to_string(),
            2 | 3 => self.string(&serde_json::Map::new()),
            4 => self.value(&json!({"type": "array", "maxItems": 2}), depth + 1),
            _ => self.value(&json!({"type": "object"}), depth + 1),
        }
    }

    fn string(&mut self, o: &serde_json::Map<String, Value>) -> String {
        let d = |r: &mut Rng, n: u64| (0..n).map(|_| char::from(b'0' + r.below(10) as u8)).collect::<String>();
        match o.get("format").and_then(Value::as_str) {
            Some("date") => {
                return format!(
                    "\"20{}-0{}-1{}\"",
                    d(&mut self.rng, 2),
                    1 + self.rng.below(9),
                    self.rng.below(10)
                )
            }
            Some("time") => {
                return format!(
                    "\"1{}:3{}:0{}Z\"",
                    self.rng.below(10),
                    self.rng.below(10),
                    self.rng.below(10)
                )
            }
            Some("date-time") => {
                return format!(
                    "\"2024-1{}-0{}T23:59:0{}.123+05:30\"",
                    self.rng.below(3),
                    1 + self.rng.below(9),
                    self.rng.below(10)
                )
            }
            Some("uuid") => return "\"123e4567-e89b-12d3-a456-426614174000\"".into(),
            _ => {}
        }
        let min = o.get("minLength").and_then(Value::as_u64).unwrap_or(0);
        let max = o.get("maxLength").and_then(Value::as_u64).unwrap_or(min + 6);
        let n = min + self.rng.below(max - min + 1);
        let units: String = (0..n)
            .map(|_| {
                *self
                    .rng
                    .pick(&["a", "Z", "7", " ", "é", "\\n", "\\\"", "\\u00e9", "-", "日"])
            })
            .collect();
        format!("\"{units}\"")
    }

    fn integer(&mut self, o: &serde_json::Map<String, Value>) -> String {
        let bound = |k: &str, up: bool| {
            o.get(k)
                .and_then(Value::as_f64)
                .map(|f| if up { f.ceil() } else { f.floor() } as i64)
        };
        let min = bound("minimum", true)
            .or(bound("exclusiveMinimum", false).map(|m| m + 1))
            .unwrap_or(-100_000);
        let max = bound("maximum", false)
            .or(bound("exclusiveMaximum", true).map(|m| m - 1))
            .unwrap_or(100_000);
        (min + self.rng.below((max - min + 1) as u64) as i64).to_string()
    }
}

/// Variants of a sample that a grammar may or may not allow.
fn mutants(text: &str, rng: &mut Rng, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    for _ in 0..n {
        let mut c = chars.clone();
        let at = rng.below(c.len() as u64 + 1) as usize;
        let junk = *rng.pick(&['"', ',', '1', 'a', ' ', '}', ']', '\n', '-', '0', ':', '{', '.', 'e']);
        match rng.below(4) {
            0 if at < c.len() => {
                c.remove(at);
            }
            1 => c.insert(at, junk),
            2 if at < c.len() => c[at] = junk,
            _ => c.truncate(at),
        }
        out.push(c.into_iter().collect());
    }
    out
}

/// The schemas both converters read, one feature (or a few) each.
fn schemas() -> Vec<(Value, Vec<&'static str>)> {
    vec![
        (json!({"type": "string"}), vec![]),
        (json!({"type": "integer"}), vec!["-0", "007", "12345678901234567"]),
        (json!({"type": "number"}), vec!["1.", ".5", "1e", "-0.0e+00", "01"]),
        (json!({"type": "boolean"}), vec!["True"]),
        (json!({"type": "null"}), vec![]),
        (json!({}), vec!["[1,2]", "{\"a\":[{}]}", "\"x\""]),
        (
            json!({"enum": ["red", "green", 3, null, {"a": [1]}]}),
            vec!["\"blue\"", "{\"a\":[1]}"],
        ),
        (
            json!({"const": {"k": "v", "n": 1.5}}),
            vec!["{\"k\":\"v\",\"n\":1.5}", "{\"n\":1.5,\"k\":\"v\"}"],
        ),
        (
            json!({"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}, "required": ["name", "age"]}),
            vec![
                "{\"age\":1,\"name\":\"x\"}",
                "{\"name\" : \"x\",\"age\":1}",
                "{\"name\":\"x\"}",
            ],
        ),
        (
            json!({"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "boolean"}, "c": {"type": "null"}}, "required": ["b"]}),
            vec![
                "{\"b\":true}",
                "{\"c\":null,\"b\":true}",
                "{\"a\":1,\"b\":false,\"c\":null}",
                "{}",
            ],
        ),
        (
            json!({"type": "object", "properties": {"x": {"type": "string"}, "y": {"type": "string"}}}),
            vec!["{}", "{ }", "{\"y\":\"\"}", "{\"y\":\"\",\"x\":\"\"}"],
        ),
        (
            json!({"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"], "additionalProperties": true}),
            vec![
                "{\"id\":1,\"other\":[1]}",
                "{\"other\":1,\"id\":1}",
                "{\"id\":1,\"id\":2}",
            ],
        ),
        (
            json!({"type": "object", "additionalProperties": {"type": "integer", "minimum": 0}}),
            vec!["{\"a\":1,\"b\":-1}", "{\"a\":1,\"b\":2}"],
        ),
        (
            json!({"type": "object", "properties": {}, "additionalProperties": false}),
            vec!["{}", "{ }", "{\"a\":1}"],
        ),
        (json!({"type": "object"}), vec!["{\"a\":{\"b\":[]}}"]),
        (
            json!({"type": "object", "properties": {"ab": {"type": "integer"}, "abc": {"type": "null"}, "b": {"const": true}, "first name": {"type": "string"}, "ü\"q": {"type": "boolean"}},
                   "additionalProperties": {"type": "array", "items": {"type": "integer"}}}),
            vec![
                "{\"a\":[]}",
                "{\"abcd\":[1]}",
                "{\"ab\":1,\"x\":[2]}",
                "{\"\":[]}",
                "{\"b\":true,\"c\":[]}",
                "{\"first name\":\"x\"}",
                "{\"ü\\\"q\":true}",
            ],
        ),
        (
            json!({"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 4}),
            vec!["[1]", "[1,2]", "[1,2,3,4,5]", "[ 1 , 2 ]"],
        ),
        (
            json!({"type": "array", "items": {"type": "string"}, "minItems": 1}),
            vec!["[]", "[\"a\"]"],
        ),
        (
            json!({"type": "array", "items": {"type": "boolean"}, "maxItems": 1}),
            vec!["[]", "[true,false]"],
        ),
        (json!({"type": "array", "maxItems": 0}), vec!["[]", "[1]"]),
        (
            json!({"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}]}),
            vec!["[\"a\",1]", "[\"a\"]"],
        ),
        (
            json!({"type": "object", "properties": {"user": {"type": "object", "properties": {"tags": {"type": "array", "items": {"enum": ["a", "b"]}}, "score": {"type": "number"}}, "required": ["score"]}}, "required": ["user"]}),
            vec!["{\"user\":{\"score\":1}}", "{\"user\":{}}"],
        ),
        (
            json!({"$defs": {"point": {"type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}}, "required": ["x", "y"]}},
                   "type": "object", "properties": {"from": {"$ref": "#/$defs/point"}, "to": {"$ref": "#/$defs/point"}}, "required": ["from", "to"]}),
            vec!["{\"from\":{\"x\":1,\"y\":2},\"to\":{\"x\":3,\"y\":4}}"],
        ),
        (
            json!({"$ref": "#/definitions/node", "definitions": {"node": {"type": "object", "properties": {"v": {"type": "integer"}, "next": {"anyOf": [{"$ref": "#/definitions/node"}, {"type": "null"}]}}, "required": ["v"]}}}),
            vec!["{\"v\":1,\"next\":{\"v\":2,\"next\":null}}", "{\"v\":1,\"next\":{}}"],
        ),
        (
            json!({"anyOf": [{"type": "string", "maxLength": 2}, {"type": "integer", "minimum": 10}]}),
            vec!["\"abc\"", "9", "10", "\"ab\""],
        ),
        (
            json!({"oneOf": [{"const": "a"}, {"type": "array", "items": {"const": 1}}]}),
            vec!["[1,1]", "[2]"],
        ),
        (json!({"type": ["string", "null"]}), vec!["null", "\"x\"", "1"]),
        (
            json!({"type": ["integer", "boolean"], "minimum": 3}),
            vec!["2", "3", "true"],
        ),
        (
            json!({"allOf": [{"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
                              {"$ref": "#/$defs/b"}], "$defs": {"b": {"type": "object", "properties": {"b": {"type": "integer"}}, "required": ["b"]}}}),
            vec!["{\"a\":\"x\"}", "{\"a\":\"x\",\"b\":1}", "{\"b\":1}"],
        ),
        (
            json!({"allOf": [{"type": "object", "properties": {"k": {"enum": ["x", "y"]}}, "required": ["k"]},
                              {"anyOf": [{"type": "object", "properties": {"p": {"type": "integer"}}},
                                         {"type": "object", "properties": {"q": {"type": "boolean"}}}]}]}),
            vec![
                "{\"k\":\"x\"}",
                "{\"k\":\"y\",\"p\":1,\"q\":true}",
                "{\"k\":\"x\",\"q\":false}",
                "{\"p\":1}",
            ],
        ),
        (
            json!({"type": "array", "items": [{"const": "v1"}, {"type": "array", "items": {"type": "number"}, "maxItems": 2}]}),
            vec!["[\"v1\",[]]", "[\"v1\",[1,2,3]]", "[\"v1\"]"],
        ),
        (
            json!({"type": "object", "properties": {"when": {"type": ["string", "null"], "format": "date-time"}, "id": {"type": "string", "format": "uuid"}}, "required": ["id", "when"], "additionalProperties": false}),
            vec![
                "{\"when\":null,\"id\":\"123e4567-e89b-12d3-a456-426614174000\"}",
                "{\"id\":\"123e4567-e89b-12d3-a456-426614174000\",\"when\":null}",
            ],
        ),
        (
            json!({"type": "string", "minLength": 2, "maxLength": 3}),
            vec!["\"a\"", "\"abcd\"", "\"\\n\\t\""],
        ),
        (json!({"type": "string", "minLength": 1}), vec!["\"\""]),
        (
            json!({"type": "string", "format": "date"}),
            vec!["\"2024-02-30\"", "\"2024-13-01\"", "\"2024-1-01\""],
        ),
        (
            json!({"type": "string", "format": "time"}),
            vec!["\"24:00:00Z\"", "\"12:00:00\"", "\"12:00:00.5Z\"", "\"23:59:59-11:00\""],
        ),
        (
            json!({"type": "string", "format": "date-time"}),
            vec!["\"2024-01-01 10:00:00Z\"", "\"2024-01-01T10:00:00Z\""],
        ),
        (
            json!({"type": "string", "format": "uuid"}),
            vec![
                "\"123e4567-e89b-12d3-a456-42661417400\"",
                "\"ABCDEF01-0000-0000-0000-000000000000\"",
            ],
        ),
        (
            json!({"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3,5}$", "examples": ["AB-123", "ZQ-98765", "XX-0000"]}),
            vec![
                "\"AB-123\"",
                "\"AB-12\"",
                "\"AB-123456\"",
                "\"ab-123\"",
                "\"AB123\"",
                "\"AB-12345\"",
            ],
        ),
        (
            json!({"type": "string", "pattern": "^(foo|ba[rz])+(?:\\.x)?$", "examples": ["foo", "barbazfoo.x", "baz.x"]}),
            vec![
                "\"foo\"",
                "\"barbaz\"",
                "\"foo.x\"",
                "\"fooqux\"",
                "\"\"",
                "\"foo.\"",
                "\"bazfoo.x\"",
            ],
        ),
        (
            json!({"type": "string", "pattern": "^[^,]*,.?$", "examples": ["a b,", "日本,x", ","]}),
            vec!["\",\"", "\"ab,c\"", "\"ab,cd\"", "\"abc\""],
        ),
        (
            json!({"type": "integer", "minimum": 0, "maximum": 130}),
            vec!["0", "130", "131", "-1", "-0", "99", "100", "01"],
        ),
        (
            json!({"type": "integer", "minimum": -25, "maximum": 7}),
            vec!["-25", "-26", "7", "8", "-0", "0", "-9", "-10"],
        ),
        (
            json!({"type": "integer", "minimum": -500, "maximum": -17}),
            vec!["-17", "-16", "-500", "-501", "0"],
        ),
        (
            json!({"type": "integer", "minimum": 42}),
            vec!["41", "42", "100", "999999", "-42", "9"],
        ),
        (
            json!({"type": "integer", "exclusiveMaximum": 10}),
            vec!["9", "10", "-12345", "0"],
        ),
        (
            json!({"type": "integer", "minimum": -3}),
            vec!["-3", "-4", "-0", "0", "77777"],
        ),
        (
            json!({"type": "integer", "minimum": 1.5, "maximum": 9.5}),
            vec!["1", "2", "9", "10"],
        ),
    ]
}

#[test]
fn our_grammars_and_llama_cpps_accept_the_same_texts() {
    let mut checked = 0usize;
    let (mut accepted, mut refused) = (0usize, 0usize);
    for (n, (schema, extra_samples)) in schemas().into_iter().enumerate() {
        let ours = nrvna_schema::json_schema_to_gbnf(&schema).unwrap_or_else(|e| panic!("schema {n} {schema}: {e}"));
        let theirs = llama_cpp_2::json_schema_to_grammar(&schema.to_string())
            .unwrap_or_else(|e| panic!("llama.cpp refused schema {n} {schema}: {e}"));
        let seed = 0x9E37_79B9_7F4A_7C15u64 ^ (n as u64 + 1);
        let mut gen = Gen {
            root: &schema,
            rng: Rng(seed),
        };
        let mut samples: Vec<String> = extra_samples.iter().map(|s| s.to_string()).collect();
        for _ in 0..40 {
            let v = gen.value(&schema, 0);
            let m = mutants(&v, &mut gen.rng, 6);
            samples.push(v);
            samples.extend(m);
        }
        samples.sort();
        samples.dedup();
        for s in &samples {
            let (a, b) = (accepts(&ours, s), accepts(&theirs, s));
            assert_eq!(
                a, b,
                "schema {n} {schema} (seed {seed:#x}): ours {} but llama.cpp's {} the text {s:?}\n--- ours:\n{ours}\n--- llama.cpp's:\n{theirs}",
                if a { "accepts" } else { "refuses" },
                if b { "accepts" } else { "refuses" },
            );
            checked += 1;
            if a {
                accepted += 1;
            } else {
                refused += 1;
            }
        }
    }
    eprintln!("{checked} texts: {accepted} accepted and {refused} refused by both");
    // Not vacuous: both sides of the comparison were exercised.
    assert!(
        accepted > 2000 && refused > 4000,
        "{accepted} accepted, {refused} refused"
    );
}

#[test]
fn generated_instances_are_accepted() {
    // The generator writes valid instances: each must pass both grammars
    // (checked above as agreement; here as acceptance), or the comparison
    // above would be between two grammars refusing everything.
    for (n, (schema, _)) in schemas().into_iter().enumerate() {
        let ours = nrvna_schema::json_schema_to_gbnf(&schema).unwrap();
        let mut gen = Gen {
            root: &schema,
            rng: Rng(0xDEAD_BEEF ^ n as u64),
        };
        for _ in 0..5 {
            let v = gen.value(&schema, 0);
            assert!(
                accepts(&ours, &v),
                "schema {n} {schema}: ours refuses its own instance {v:?}\n{ours}"
            );
        }
    }
}

/// A number's whole bounds, which llama.cpp's converter ignores: ours
/// enforces them. Each text's verdict is checked against arithmetic: a
/// decimal (no exponent, no `-0`) within the bounds.
#[test]
fn number_bounds_hold_exactly() {
    /// A bound and whether it is allowed itself.
    type Bound = Option<(f64, bool)>;
    let cases: Vec<(Value, Bound, Bound)> = vec![
        (
            json!({"type": "number", "minimum": 0, "maximum": 1}),
            Some((0.0, true)),
            Some((1.0, true)),
        ),
        (
            json!({"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}),
            Some((0.0, false)),
            Some((1.0, false)),
        ),
        (
            json!({"type": "number", "minimum": -3, "maximum": 12}),
            Some((-3.0, true)),
            Some((12.0, true)),
        ),
        (
            json!({"type": "number", "exclusiveMinimum": -1}),
            Some((-1.0, false)),
            None,
        ),
        (json!({"type": "number", "maximum": -2}), None, Some((-2.0, true))),
        (
            json!({"type": "number", "minimum": 5, "exclusiveMaximum": 100}),
            Some((5.0, true)),
            Some((100.0, false)),
        ),
        (
            json!({"type": "number", "minimum": 7, "maximum": 7}),
            Some((7.0, true)),
            Some((7.0, true)),
        ),
        (
            json!({"type": "number", "minimum": -10.0, "exclusiveMaximum": -9}),
            Some((-10.0, true)),
            Some((-9.0, false)),
        ),
    ];
    let mut rng = Rng(0x5EED);
    let (mut yes, mut no) = (0, 0);
    for (schema, min, max) in cases {
        let g = nrvna_schema::json_schema_to_gbnf(&schema).unwrap();
        let mut texts: Vec<String> = [
            "0", "-0", "0.0", "-0.0", "1", "1.0", "1.5", "0.5", "-0.5", "-1", "-1.0", "-1.25", "7", "7.00", "7.01",
            "6.99", "100", "99.999", "-2", "-2.0", "-2.5", "-3", "-3.01", "12", "12.000", "12.5", "-10", "-9.5", "-9",
            "-9.0", "-10.5", "5", "4.9", "1e2", "01", "1.", ".5", "--1", "0.05",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for _ in 0..150 {
            let int = rng.below(130) as i64 - 15;
            let frac = match rng.below(4) {
                0 => String::new(),
                1 => ".0".into(),
                2 => format!(".{}", rng.below(10)),
                _ => format!(".{:03}", rng.below(1000)),
            };
            texts.push(format!("{int}{frac}"));
        }
        for t in texts {
            let syntax = {
                let body = t.strip_prefix('-').unwrap_or(&t);
                let (i, f) = body.split_once('.').unwrap_or((body, "0"));
                !i.is_empty()
                    && i.bytes().all(|b| b.is_ascii_digit())
                    && (i == "0" || !i.starts_with('0'))
                    && !f.is_empty()
                    && f.bytes().all(|b| b.is_ascii_digit())
            };
            let v: f64 = t.parse().unwrap_or(f64::NAN);
            let negative_zero = t.starts_with('-') && v == 0.0;
            let in_range = min.is_none_or(|(m, incl)| if incl { v >= m } else { v > m })
                && max.is_none_or(|(m, incl)| if incl { v <= m } else { v < m });
            let want = syntax && !negative_zero && in_range;
            assert_eq!(accepts(&g, &t), want, "{schema}: {t:?}\n{g}");
            if want {
                yes += 1;
            } else {
                no += 1;
            }
        }
    }
    assert!(yes > 300 && no > 300, "{yes} accepted, {no} refused");
}
