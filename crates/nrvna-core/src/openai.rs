//! OpenAI request bodies as jobs: one mapping from a chat completion,
//! completion or embeddings body onto prompt.txt, params.json, schema.json
//! and (images sent inline in chat messages) the job's images/, shared by `wrk --batch` (batch file lines) and `nrvna-api`
//! (HTTP requests), so that both submit exactly the same job for a body.

use base64::Engine as _;
use serde_json::{Map, Value};

use crate::config::Settings;
use crate::media::{MediaFile, MediaKind, MAX_FILES};
use crate::params::Params;
use crate::state::JobType;
use nrvna_schema::check::check_schema;

use crate::submit::{OutputFormat, Submission};

/// A body that cannot become a job: which field (`param`, as OpenAI's error
/// object names it) and what is wrong with it.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    pub param: Option<String>,
    pub message: String,
}

fn bad<T>(param: &str, message: impl Into<String>) -> Result<T, RequestError> {
    Err(RequestError {
        param: (!param.is_empty()).then(|| param.to_owned()),
        message: message.into(),
    })
}

/// The prompt of a vision request whose last message holds images and no
/// text (the C++ daemon refuses an empty vision prompt).
pub const VISION_DEFAULT_PROMPT: &str = "Describe the image.";

/// `/v1/chat/completions` with the default media limits; see
/// [`chat_submission_within`].
pub fn chat_submission(body: &Map<String, Value>, defaults: &Params) -> Result<Submission, RequestError> {
    chat_submission_within(body, defaults, &Settings::default())
}

/// `/v1/chat/completions`: system (and developer) messages become the
/// system prompt, the last message must be the user's and is the prompt,
/// and earlier turns are rendered before it as `role: content` lines.
/// Sampling fields override `defaults`. `image_url` parts with a `data:`
/// URI make it a vision job with those images (in message order), each
/// checked against `limits` and by its first bytes.
pub fn chat_submission_within(
    body: &Map<String, Value>,
    defaults: &Params,
    limits: &Settings,
) -> Result<Submission, RequestError> {
    let messages = match body.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => m,
        Some(Value::Array(_)) => return bad("messages", "messages is empty; give at least one user message"),
        _ => return bad("messages", "messages is missing or not an array"),
    };
    let mut system = Vec::new();
    let mut turns: Vec<(String, String)> = Vec::new();
    let mut images = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let at = format!("messages[{i}]");
        let Some(role) = m.get("role").and_then(Value::as_str) else {
            return bad(&format!("{at}.role"), format!("{at}.role is missing or not a string"));
        };
        let content = message_content(m.get("content"), &format!("{at}.content"), limits, &mut images)?;
        match role {
            "system" | "developer" => system.push(content),
            "user" | "assistant" | "tool" => turns.push((role.to_owned(), content)),
            other => {
                return bad(
                    &format!("{at}.role"),
                    format!("{at}.role {other:?} is not one of system, developer, user, assistant, tool"),
                )
            }
        }
    }
    let Some((last_role, last)) = turns.pop() else {
        return bad("messages", "messages has no user message");
    };
    if last_role != "user" {
        return bad(
            "messages",
            format!("the last message of messages must be from the user (it is from {last_role:?})"),
        );
    }
    let mut prompt = String::new();
    for (role, content) in &turns {
        prompt.push_str(role);
        prompt.push_str(": ");
        prompt.push_str(content);
        prompt.push('\n');
    }
    prompt.push_str(&last);
    if !images.is_empty() && prompt.trim().is_empty() {
        prompt = VISION_DEFAULT_PROMPT.to_owned();
    }

    let mut sub = Submission::text(prompt);
    if !images.is_empty() {
        sub.job_type = JobType::Vision;
        sub.media = images;
    }
    sub.params = sampling(body, defaults)?;
    if !system.is_empty() {
        sub.params.system = Some(system.join("\n\n"));
    }
    sub.output = response_format(body.get("response_format"))?;
    Ok(sub)
}

/// `/v1/completions`: `prompt` (one string, or an array of one) is the
/// prompt; sampling fields as for chat.
pub fn completion_submission(body: &Map<String, Value>, defaults: &Params) -> Result<Submission, RequestError> {
    let prompt = match body.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => a[0].as_str().unwrap_or_default().to_owned(),
        Some(Value::Array(_)) => return bad("prompt", "prompt must be one string; send one request per prompt"),
        _ => return bad("prompt", "prompt is missing or not a string"),
    };
    let mut sub = Submission::text(prompt);
    sub.params = sampling(body, defaults)?;
    Ok(sub)
}

/// The most inputs one embeddings request may carry (OpenAI's limit).
pub const MAX_EMBEDDING_INPUTS: usize = 2048;

/// `/v1/embeddings`: the texts of `input` (a string or an array of
/// strings), in order.
pub fn embedding_inputs(body: &Map<String, Value>) -> Result<Vec<String>, RequestError> {
    match body.get("input") {
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(a)) if a.len() > MAX_EMBEDDING_INPUTS => bad(
            "input",
            format!(
                "input has {} items, over the limit of {MAX_EMBEDDING_INPUTS} per request; split it into several requests",
                a.len()
            ),
        ),
        Some(Value::Array(a)) if !a.is_empty() => a
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.clone()),
                _ => bad(
                    "input",
                    format!("input[{i}] is not a string (token arrays are not supported; send text)"),
                ),
            })
            .collect(),
        Some(Value::Array(_)) => bad("input", "input is an empty array"),
        _ => bad("input", "input is missing or not a string or an array of strings"),
    }
}

/// One embedding job. Sampling does not apply to embeddings; a timeout and
/// a priority do.
pub fn embedding_submission(input: String, defaults: &Params) -> Submission {
    let mut sub = Submission::text(input);
    sub.job_type = JobType::Embed;
    sub.params = Params {
        timeout_s: defaults.timeout_s,
        priority: defaults.priority,
        model: defaults.model.clone(),
        ..Params::default()
    };
    sub
}

/// The sampling fields of a chat or completion body over `defaults`.
fn sampling(body: &Map<String, Value>, defaults: &Params) -> Result<Params, RequestError> {
    let mut p = defaults.clone();
    let field = |k: &str| body.get(k).filter(|v| !v.is_null());
    if let Some(n) = field("n") {
        if n.as_u64() != Some(1) {
            return bad("n", "n must be 1; ask for more completions with more requests");
        }
    }
    for key in ["max_tokens", "max_completion_tokens"] {
        if let Some(v) = field(key) {
            match v.as_u64().and_then(|n| u32::try_from(n).ok()).filter(|&n| n >= 1) {
                Some(n) => p.max_tokens = Some(n),
                None => return bad(key, format!("{key} must be a positive integer")),
            }
        }
    }
    if let Some(v) = field("temperature") {
        p.temp = Some(in_range(v, "temperature", 0.0, 2.0)?);
    }
    if let Some(v) = field("frequency_penalty") {
        p.frequency_penalty = Some(in_range(v, "frequency_penalty", -2.0, 2.0)?).filter(|&f| f != 0.0);
    }
    if let Some(v) = field("presence_penalty") {
        p.presence_penalty = Some(in_range(v, "presence_penalty", -2.0, 2.0)?).filter(|&f| f != 0.0);
    }
    if let Some(v) = field("top_p") {
        p.top_p = Some(number(v, "top_p")?);
    }
    if let Some(v) = field("min_p") {
        p.min_p = Some(number(v, "min_p")?);
    }
    if let Some(v) = field("repeat_penalty") {
        p.repeat_penalty = Some(number(v, "repeat_penalty")?);
    }
    if let Some(v) = field("top_k") {
        match v.as_i64().and_then(|n| i32::try_from(n).ok()) {
            Some(k) => p.top_k = Some(k),
            None => return bad("top_k", "top_k must be an integer"),
        }
    }
    if let Some(v) = field("seed") {
        match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(s) => p.seed = Some(s),
            None => return bad("seed", format!("seed must be an integer from 0 to {}", u32::MAX)),
        }
    }
    match body.get("stop") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => p.stop = Some(vec![s.clone()]),
        Some(Value::Array(a)) => {
            let Some(stops) = a
                .iter()
                .map(|s| s.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
            else {
                return bad("stop", "stop must be a string or an array of strings");
            };
            if !stops.is_empty() {
                p.stop = Some(stops);
            }
        }
        Some(_) => return bad("stop", "stop must be a string or an array of strings"),
    }
    if let Err(e) = p.validate() {
        return bad("", format!("invalid parameters: {e}"));
    }
    Ok(p)
}

/// A message's text: a string, or an array of `{"type":"text","text":...}`
/// and `{"type":"image_url","image_url":{"url":...}}` parts; the images
/// are added to `images`.
fn message_content(
    content: Option<&Value>,
    at: &str,
    limits: &Settings,
    images: &mut Vec<MediaFile>,
) -> Result<String, RequestError> {
    match content {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::new();
            for (j, part) in parts.iter().enumerate() {
                match (
                    part.get("type").and_then(Value::as_str),
                    part.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => texts.push(t),
                    (Some("image_url"), _) => {
                        let at = format!("{at}[{j}].image_url");
                        if images.len() >= MAX_FILES {
                            return bad(&at, format!("{at}: a request may hold at most {MAX_FILES} images"));
                        }
                        let url = match part.get("image_url") {
                            Some(Value::String(u)) => u.as_str(),
                            Some(o) => o.get("url").and_then(Value::as_str).unwrap_or_default(),
                            None => "",
                        };
                        images.push(inline_image(url, &at, limits)?);
                    }
                    (Some(other), _) if other != "text" => {
                        return bad(
                            at,
                            format!("{at} part {j} has type {other:?}; only text and image_url parts are supported"),
                        )
                    }
                    _ => {
                        return bad(
                            at,
                            format!("{at} part {j} must be {{\"type\": \"text\", \"text\": \"...\"}}"),
                        )
                    }
                }
            }
            Ok(texts.join("\n"))
        }
        Some(Value::Null) | None => bad(at, format!("{at} is missing")),
        Some(_) => bad(at, format!("{at} must be a string or an array of content parts")),
    }
}

/// The image of an `image_url` part: a `data:<type>;base64,<data>` URI,
/// decoded and checked (size limit, a format the daemon decodes). Remote
/// URLs are refused: a submitter fetches nothing.
fn inline_image(url: &str, at: &str, limits: &Settings) -> Result<MediaFile, RequestError> {
    if url.is_empty() {
        return bad(
            at,
            format!("{at}.url is missing; give the image as a data URI (data:image/png;base64,...)"),
        );
    }
    let Some(rest) = url.strip_prefix("data:") else {
        let shown: String = url.chars().take(40).collect();
        let why = if url.starts_with("http://") || url.starts_with("https://") {
            "remote image URLs are not fetched (nrvna reads nothing from the network)"
        } else if url.starts_with("file-") {
            "uploaded files are taken by nrvna-api's /v1/chat/completions only, not here"
        } else {
            "it is not a data URI"
        };
        return bad(
            at,
            format!("{at}.url {shown:?}: {why}; send the image inline as data:image/png;base64,..."),
        );
    };
    let Some((header, data)) = rest.split_once(',') else {
        return bad(at, format!("{at}.url is a data URI without a comma before its data"));
    };
    if !header.split(';').any(|p| p.eq_ignore_ascii_case("base64")) {
        return bad(
            at,
            format!("{at}.url must be a base64 data URI (data:image/png;base64,...); {header:?} is not base64"),
        );
    }
    let limit = limits.max_image_bytes;
    // Base64 is 4 characters per 3 bytes: reject a far too large URI undecoded.
    if (data.len() as u64 / 4).saturating_mul(3) > limit.saturating_add(3) {
        return bad(
            at,
            format!(
                "{at}: the image is over the limit of {limit} bytes ({})",
                MediaKind::Image.limit_var()
            ),
        );
    }
    let bytes = match base64::engine::general_purpose::STANDARD.decode(data.trim()) {
        Ok(b) => b,
        Err(e) => return bad(at, format!("{at}.url: the data URI's base64 does not decode: {e}")),
    };
    if bytes.is_empty() {
        return bad(at, format!("{at}: the image is empty"));
    }
    if bytes.len() as u64 > limit {
        return bad(
            at,
            format!(
                "{at}: the image is {} bytes, over the limit of {limit} bytes ({})",
                bytes.len(),
                MediaKind::Image.limit_var()
            ),
        );
    }
    let Some(format) = MediaKind::Image.sniff(&bytes) else {
        return bad(
            at,
            format!(
                "{at}: the image is not {} (its first bytes are no known format, whatever its data URI says)",
                MediaKind::Image.formats()
            ),
        );
    };
    Ok(MediaFile {
        kind: MediaKind::Image,
        ext: format.to_owned(),
        bytes,
    })
}

/// A number from `lo` to `hi` (OpenAI's ranges for its sampling fields).
fn in_range(v: &Value, key: &str, lo: f32, hi: f32) -> Result<f32, RequestError> {
    let f = number(v, key)?;
    if (lo..=hi).contains(&f) {
        Ok(f)
    } else {
        bad(key, format!("{key} must be a number from {lo} to {hi}; it is {f}"))
    }
}

fn number(v: &Value, key: &str) -> Result<f32, RequestError> {
    match v.as_f64() {
        Some(f) => Ok(f as f32),
        None => bad(key, format!("{key} must be a number")),
    }
}

/// `response_format`: `json_schema` becomes schema.json, `json_object` a
/// schema that asks for any object, `text` nothing. A schema is checked
/// (and its grammar, grammar.gbnf, which C++ daemons require, written)
/// before it becomes schema.json.
fn response_format(rf: Option<&Value>) -> Result<Option<OutputFormat>, RequestError> {
    let Some(rf) = rf.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    match rf.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => {
            let schema = serde_json::json!({"type": "object"});
            let grammar = check_schema(&schema).or_else(|e| bad("response_format", e.to_string()))?;
            Ok(Some(OutputFormat::JsonSchema {
                schema: format!("{schema}\n"),
                grammar,
            }))
        }
        Some("json_schema") => {
            let Some(schema) = rf.get("json_schema").and_then(|j| j.get("schema")) else {
                return bad("response_format", "response_format.json_schema.schema is missing");
            };
            let grammar = match check_schema(schema) {
                Ok(g) => g,
                Err(e) => return bad("response_format", format!("response_format.json_schema.schema {e}")),
            };
            let mut text = serde_json::to_string_pretty(schema).unwrap_or_default();
            text.push('\n');
            Ok(Some(OutputFormat::JsonSchema { schema: text, grammar }))
        }
        Some(other) => bad(
            "response_format",
            format!("response_format.type {other:?} is not one of text, json_object, json_schema"),
        ),
        None => bad("response_format", "response_format.type is missing"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::Priority;

    fn obj(s: &str) -> Map<String, Value> {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn chat_fields_map_onto_params_over_the_defaults() {
        let defaults = Params {
            priority: Some(Priority::High),
            temp: Some(0.9),
            ..Params::default()
        };
        let s = chat_submission(
            &obj(
                r#"{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"},
                {"role":"assistant","content":"Hello!"},{"role":"user","content":[{"type":"text","text":"Go"}]}],
                "max_tokens":5,"top_k":3,"seed":7,"stop":["x"],"temperature":null}"#,
            ),
            &defaults,
        )
        .unwrap();
        assert_eq!(s.prompt, "user: Hi\nassistant: Hello!\nGo");
        assert_eq!(s.params.system.as_deref(), Some("Be brief."));
        assert_eq!(s.params.max_tokens, Some(5));
        assert_eq!(s.params.top_k, Some(3));
        assert_eq!(s.params.temp, Some(0.9), "a null field keeps the default");
        assert_eq!(s.params.priority, Some(Priority::High));
    }

    #[test]
    fn penalties_in_range_become_params_and_zero_is_no_penalty() {
        let s = chat_submission(
            &obj(r#"{"messages":[{"role":"user","content":"x"}],"temperature":2,"presence_penalty":-2,"frequency_penalty":0}"#),
            &Params::default(),
        )
        .unwrap();
        assert_eq!(s.params.temp, Some(2.0));
        assert_eq!(s.params.presence_penalty, Some(-2.0));
        assert_eq!(s.params.frequency_penalty, None);
    }

    #[test]
    fn bad_fields_are_named() {
        for (body, param) in [
            (r#"{"messages":"hi"}"#, "messages"),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#,
                "temperature",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"max_tokens":0}"#,
                "max_tokens",
            ),
            (r#"{"messages":[{"content":"x"}]}"#, "messages[0].role"),
            // OpenAI's ranges: temperature 0 to 2, the penalties -2 to 2.
            (
                r#"{"messages":[{"role":"user","content":"x"}],"temperature":3}"#,
                "temperature",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"presence_penalty":5}"#,
                "presence_penalty",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"frequency_penalty":-2.5}"#,
                "frequency_penalty",
            ),
            (
                r#"{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"xml"}}"#,
                "response_format",
            ),
        ] {
            let e = chat_submission(&obj(body), &Params::default()).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{body}: {e}");
        }
        let e = chat_submission(
            &obj(r#"{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema","json_schema":{"schema":{"type":"strnig"}}}}"#),
            &Params::default(),
        )
        .unwrap_err();
        assert_eq!(e.param.as_deref(), Some("response_format"));
        assert!(e.message.contains("is not a valid JSON Schema"), "{e}");
    }

    #[test]
    fn image_parts_make_a_vision_job_and_bad_images_are_named() {
        use base64::Engine as _;
        let png = b"\x89PNG\r\n\x1a\nrest";
        let uri = format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(png)
        );
        let body = serde_json::json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": uri, "detail": "low"}},
        ]}]});
        let s = chat_submission(body.as_object().unwrap(), &Params::default()).unwrap();
        assert_eq!(s.job_type, JobType::Vision);
        assert_eq!(s.prompt, "What is this?");
        assert_eq!(s.media.len(), 1);
        assert_eq!((s.media[0].ext.as_str(), &s.media[0].bytes[..]), ("png", &png[..]));
        // Images alone: the task is spelled out.
        let body = serde_json::json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": uri}}]}]});
        let s = chat_submission(body.as_object().unwrap(), &Params::default()).unwrap();
        assert_eq!(s.prompt, VISION_DEFAULT_PROMPT);

        let not_png = format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(b"hello")
        );
        for (url, says) in [
            ("https://example.com/cat.png", "not fetched"),
            ("data:image/png;base64,@@@not base64", "does not decode"),
            ("data:image/png,rawbytes", "must be a base64 data URI"),
            (not_png.as_str(), "is not png, jpg"),
            ("", "is missing"),
        ] {
            let body = serde_json::json!({"messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}}]}]});
            let e = chat_submission(body.as_object().unwrap(), &Params::default()).unwrap_err();
            assert_eq!(
                e.param.as_deref(),
                Some("messages[0].content[0].image_url"),
                "{url}: {e}"
            );
            assert!(e.message.contains(says), "{url}: {e}");
        }
        let small = Settings {
            max_image_bytes: 4,
            ..Settings::default()
        };
        let body = serde_json::json!({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": uri}}]}]});
        let e = chat_submission_within(body.as_object().unwrap(), &Params::default(), &small).unwrap_err();
        assert!(e.message.contains("over the limit of 4 bytes"), "{e}");
    }

    #[test]
    fn completions_and_embeddings() {
        let c = completion_submission(&obj(r#"{"prompt":["Once"],"max_tokens":2}"#), &Params::default()).unwrap();
        assert_eq!(c.prompt, "Once");
        assert!(completion_submission(&obj(r#"{"prompt":["a","b"]}"#), &Params::default()).is_err());
        assert_eq!(embedding_inputs(&obj(r#"{"input":["a","b"]}"#)).unwrap(), ["a", "b"]);
        assert!(embedding_inputs(&obj(r#"{"input":[1,2]}"#)).is_err());
        let many = |n: usize| obj(&serde_json::json!({ "input": vec!["x"; n] }).to_string());
        assert_eq!(embedding_inputs(&many(MAX_EMBEDDING_INPUTS)).unwrap().len(), 2048);
        let e = embedding_inputs(&many(MAX_EMBEDDING_INPUTS + 1)).unwrap_err();
        assert_eq!(e.param.as_deref(), Some("input"));
        assert!(e.message.contains("2049 items") && e.message.contains("2048"), "{e}");
        let e = embedding_submission("a".into(), &Params::default());
        assert_eq!(e.job_type, JobType::Embed);
    }
}
