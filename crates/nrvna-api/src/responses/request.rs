//! A `POST /v1/responses` body checked and turned into the response's
//! record and a chat-completions body (instructions as the system
//! message, the earlier responses' inputs and outputs, then this input),
//! which nrvna-core's chat mapping makes into the job.

use serde_json::{json, Map, Value};

use super::record::{text_format, Record};
use crate::error::ApiError;

/// The most metadata keys (OpenAI's limits: 16 keys of up to 64
/// characters, values of up to 512).
const MAX_METADATA_KEYS: usize = 16;

/// The request's fields that shape the response, checked.
#[derive(Debug)]
pub struct Request {
    pub rec: Record,
    pub stream: bool,
    /// The chat-completions body, less `messages` (the conversation is
    /// read from the stored earlier responses).
    pub chat: Map<String, Value>,
}

fn bool_field(body: &Map<String, Value>, key: &str, default: bool) -> Result<bool, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ApiError::invalid(format!("{key} must be a boolean")).param(key)),
    }
}

/// Checks `body` (the model is checked by the caller) for response `id`.
pub fn parse(body: &Map<String, Value>, id: &str, model: String, now: i64) -> Result<Request, ApiError> {
    let store = bool_field(body, "store", true)?;
    let background = bool_field(body, "background", false)?;
    let stream = bool_field(body, "stream", false)?;
    if background && !store {
        return Err(ApiError::invalid(
            "background responses must be stored: background=true needs store=true (or no store)",
        )
        .param("store"));
    }
    let instructions = match body.get("instructions") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(ApiError::invalid("instructions must be a string").param("instructions")),
    };
    let previous_response_id = match body.get("previous_response_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(_) => {
            return Err(
                ApiError::invalid("previous_response_id must be a response id (resp_...)")
                    .param("previous_response_id"),
            )
        }
    };
    if let Some(Value::Array(tools)) = body.get("tools") {
        if !tools.is_empty() {
            return Err(ApiError::invalid("tools are not supported by nrvna-api; send no tools").param("tools"));
        }
    }
    let metadata = metadata(body.get("metadata"))?;
    let input = input_items(body.get("input"), id)?;
    let mut chat = Map::new();
    chat.insert("model".into(), json!(model));
    let max_output_tokens = match body.get("max_output_tokens") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64().filter(|&n| (1..=u64::from(u32::MAX)).contains(&n)) {
            Some(n) => {
                chat.insert("max_tokens".into(), json!(n));
                Some(n)
            }
            None => {
                return Err(ApiError::invalid("max_output_tokens must be a positive integer").param("max_output_tokens"))
            }
        },
    };
    let mut sampling = [None, None];
    for (slot, key) in sampling.iter_mut().zip(["temperature", "top_p"]) {
        match body.get(key) {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_f64() {
                Some(f) => {
                    chat.insert(key.into(), json!(f));
                    *slot = Some(f);
                }
                None => return Err(ApiError::invalid(format!("{key} must be a number")).param(key)),
            },
        }
    }
    let text = match body.get("text") {
        None | Some(Value::Null) => text_format(),
        Some(Value::Object(t)) => {
            if let Some(rf) = response_format(t.get("format"))? {
                chat.insert("response_format".into(), rf);
            }
            Value::Object(t.clone())
        }
        Some(_) => return Err(ApiError::invalid("text must be an object such as {\"format\": {...}}").param("text")),
    };
    let rec = Record {
        id: id.to_owned(),
        created_at: now,
        model,
        input,
        instructions,
        metadata,
        text,
        store,
        background,
        previous_response_id,
        max_output_tokens,
        temperature: sampling[0],
        top_p: sampling[1],
        extra: Map::new(),
    };
    Ok(Request { rec, stream, chat })
}

fn metadata(v: Option<&Value>) -> Result<Value, ApiError> {
    let bad = |m: String| Err(ApiError::invalid(m).param("metadata"));
    match v {
        None | Some(Value::Null) => Ok(Value::Null),
        Some(Value::Object(m)) => {
            if m.len() > MAX_METADATA_KEYS {
                return bad(format!(
                    "metadata has {} keys; at most {MAX_METADATA_KEYS} are allowed",
                    m.len()
                ));
            }
            for (k, v) in m {
                if k.chars().count() > 64 {
                    return bad(format!("metadata key {k:?} is longer than 64 characters"));
                }
                match v.as_str() {
                    Some(s) if s.chars().count() <= 512 => {}
                    Some(_) => return bad(format!("metadata[{k:?}] is longer than 512 characters")),
                    None => return bad(format!("metadata[{k:?}] must be a string")),
                }
            }
            Ok(Value::Object(m.clone()))
        }
        Some(_) => bad("metadata must be an object of strings".into()),
    }
}

/// `text.format` as a chat `response_format`.
fn response_format(format: Option<&Value>) -> Result<Option<Value>, ApiError> {
    let bad = |m: &str| Err(ApiError::invalid(m.to_owned()).param("text.format"));
    let Some(f) = format.filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    match f.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let Some(schema) = f.get("schema").filter(|s| s.is_object()) else {
                return bad("text.format.schema is missing or not an object (a JSON Schema)");
            };
            let name = f.get("name").cloned().unwrap_or_else(|| json!("response"));
            Ok(Some(
                json!({"type": "json_schema", "json_schema": {"name": name, "schema": schema,
                "strict": f.get("strict").cloned().unwrap_or(Value::Null)}}),
            ))
        }
        _ => bad("text.format.type must be one of text, json_object, json_schema"),
    }
}

/// The input as a list of message items in OpenAI's shape, each with an
/// id: a string is one user message; parts are input_text, output_text
/// (an assistant's) and input_image (`image_url` data URI or `file_id`).
pub fn input_items(input: Option<&Value>, id: &str) -> Result<Vec<Value>, ApiError> {
    let bad = |param: String, m: String| Err(ApiError::invalid(m).param(param));
    let job = id.strip_prefix(super::record::PREFIX).unwrap_or(id);
    let items: Vec<Value> = match input {
        Some(Value::String(s)) => vec![json!({"role": "user", "content": s})],
        Some(Value::Array(a)) if !a.is_empty() => a.clone(),
        Some(Value::Array(_)) => return bad("input".into(), "input is empty; give a string or message items".into()),
        _ => {
            return bad(
                "input".into(),
                "input is missing; give a string or an array of message items".into(),
            )
        }
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("input[{i}]");
        let Some(obj) = item.as_object() else {
            return bad(at.clone(), format!("{at} must be a message item object"));
        };
        match obj.get("type").and_then(Value::as_str) {
            None | Some("message") => {}
            Some(other) => {
                return bad(
                    format!("{at}.type"),
                    format!("{at} is a {other:?} item; nrvna-api takes message items only"),
                )
            }
        }
        let role = match obj.get("role").and_then(Value::as_str) {
            Some(r @ ("user" | "assistant" | "system" | "developer")) => r,
            _ => {
                return bad(
                    format!("{at}.role"),
                    format!("{at}.role must be one of user, assistant, system, developer"),
                )
            }
        };
        let text_type = if role == "assistant" {
            "output_text"
        } else {
            "input_text"
        };
        let content = match obj.get("content") {
            Some(Value::String(s)) => vec![json!({"type": text_type, "text": s})],
            Some(Value::Array(parts)) => {
                let mut v = Vec::with_capacity(parts.len());
                for (j, p) in parts.iter().enumerate() {
                    v.push(part(p, &format!("{at}.content[{j}]"))?);
                }
                v
            }
            _ => {
                return bad(
                    format!("{at}.content"),
                    format!("{at}.content must be a string or an array of content parts"),
                )
            }
        };
        let item_id = match obj.get("id").and_then(Value::as_str) {
            Some(given) => given.to_owned(),
            None => format!("msg_{job}_{i}"),
        };
        out.push(json!({"id": item_id, "type": "message", "role": role, "status": "completed", "content": content}));
    }
    Ok(out)
}

fn part(p: &Value, at: &str) -> Result<Value, ApiError> {
    let bad = |m: String| Err(ApiError::invalid(m).param(at.to_owned()));
    match p.get("type").and_then(Value::as_str) {
        Some(t @ ("input_text" | "output_text")) => match p.get("text").and_then(Value::as_str) {
            Some(text) => Ok(json!({"type": t, "text": text})),
            None => bad(format!("{at}.text is missing or not a string")),
        },
        Some("input_image") => {
            let url = p.get("image_url").and_then(Value::as_str);
            let file = p.get("file_id").and_then(Value::as_str);
            let detail = p.get("detail").cloned().unwrap_or_else(|| json!("auto"));
            match (url, file) {
                (Some(u), None) => Ok(json!({"type": "input_image", "image_url": u, "detail": detail})),
                (None, Some(f)) => Ok(json!({"type": "input_image", "file_id": f, "detail": detail})),
                _ => bad(format!(
                    "{at} needs one of image_url (a data:image/...;base64 URI) or file_id (an upload with purpose \
                     vision)"
                )),
            }
        }
        Some(other) => bad(format!(
            "{at} has type {other:?}; nrvna-api takes input_text, output_text and input_image parts"
        )),
        None => bad(format!("{at}.type is missing")),
    }
}

/// A stored message item as a chat message (`file_id` images are given
/// to `image` to become data URIs).
pub fn chat_message(item: &Value, image: &mut dyn FnMut(&str) -> Result<String, String>) -> Result<Value, String> {
    let role = item.get("role").and_then(Value::as_str).unwrap_or("user");
    let mut parts = Vec::new();
    for p in item.get("content").and_then(Value::as_array).into_iter().flatten() {
        match p.get("type").and_then(Value::as_str) {
            Some("input_image") => {
                let url = match (
                    p.get("image_url").and_then(Value::as_str),
                    p.get("file_id").and_then(Value::as_str),
                ) {
                    (Some(u), _) => u.to_owned(),
                    (None, Some(f)) => image(f)?,
                    (None, None) => String::new(),
                };
                parts.push(json!({"type": "image_url", "image_url": {"url": url}}));
            }
            _ => parts.push(json!({"type": "text", "text": p.get("text").and_then(Value::as_str).unwrap_or("")})),
        }
    }
    Ok(json!({"role": role, "content": parts}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_string_input_is_one_user_message_and_the_fields_map_onto_chat() {
        let r = parse(
            &body(
                json!({"input": "hi", "instructions": "be brief", "max_output_tokens": 20, "temperature": 0,
                "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}},
                "metadata": {"k": "v"}}),
            ),
            "resp_1_2_3",
            "m".into(),
            5,
        )
        .unwrap();
        assert_eq!(
            r.rec.input,
            [
                json!({"id": "msg_1_2_3_0", "type": "message", "role": "user", "status": "completed",
            "content": [{"type": "input_text", "text": "hi"}]})
            ]
        );
        assert_eq!(r.chat["max_tokens"], 20);
        assert_eq!(
            r.chat["response_format"]["json_schema"]["schema"],
            json!({"type": "object"})
        );
        assert!(r.rec.store && !r.rec.background && !r.stream);
        assert_eq!(r.rec.metadata, json!({"k": "v"}));
    }

    #[test]
    fn json_object_and_text_formats_map_onto_response_format() {
        let with = |f: Value| {
            parse(
                &body(json!({"input": "x", "text": {"format": f}})),
                "resp_1",
                "m".into(),
                0,
            )
        };
        let r = with(json!({"type": "json_object"})).unwrap();
        assert_eq!(r.chat["response_format"], json!({"type": "json_object"}));
        assert_eq!(r.rec.text, json!({"format": {"type": "json_object"}}));
        assert!(!with(json!({"type": "text"}))
            .unwrap()
            .chat
            .contains_key("response_format"));
        let r = parse(&body(json!({"input": "x"})), "resp_1", "m".into(), 0).unwrap();
        assert_eq!(r.rec.text, text_format());
    }

    #[test]
    fn bad_bodies_name_the_field() {
        for (b, param) in [
            (json!({}), "input"),
            (json!({"input": []}), "input"),
            (json!({"input": [{"role": "robot", "content": "x"}]}), "input[0].role"),
            (json!({"input": [{"type": "function_call"}]}), "input[0].type"),
            (
                json!({"input": [{"role": "user", "content": [{"type": "input_audio"}]}]}),
                "input[0].content[0]",
            ),
            (
                json!({"input": [{"role": "user", "content": [{"type": "input_image"}]}]}),
                "input[0].content[0]",
            ),
            (json!({"input": "x", "background": true, "store": false}), "store"),
            (json!({"input": "x", "max_output_tokens": 0}), "max_output_tokens"),
            (json!({"input": "x", "metadata": {"k": 1}}), "metadata"),
            (
                json!({"input": "x", "text": {"format": {"type": "yaml"}}}),
                "text.format",
            ),
            (
                json!({"input": "x", "text": {"format": {"type": "json_schema"}}}),
                "text.format",
            ),
            (json!({"input": "x", "tools": [{"type": "web_search"}]}), "tools"),
            (json!({"input": "x", "stream": "yes"}), "stream"),
        ] {
            let e = parse(&body(b.clone()), "resp_1", "m".into(), 0).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{b}: {}", e.message);
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn items_become_chat_messages_with_uploaded_images_inlined() {
        let item = json!({"role": "user", "content": [{"type": "input_text", "text": "what?"},
            {"type": "input_image", "file_id": "file-1"}]});
        let m = chat_message(&item, &mut |f| Ok(format!("data:image;base64,{f}"))).unwrap();
        assert_eq!(
            m,
            json!({"role": "user", "content": [{"type": "text", "text": "what?"},
            {"type": "image_url", "image_url": {"url": "data:image;base64,file-1"}}]})
        );
    }
}
