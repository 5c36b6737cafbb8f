//! OpenAI's audio endpoints over the workspace: a transcription is an stt
//! job with the uploaded file as its audio, speech is a tts job answered
//! with its audio.wav. Both are synchronous requests like chat: high
//! priority, waited for, cancelled when the client goes away.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::multipart::MultipartRejection;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Multipart, State as AxState};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use nrvna_core::files::Artifact;
use nrvna_core::media::{MediaFile, MediaKind};
use nrvna_core::{JobType, Submission};
use serde_json::{json, Map, Value};

use crate::batches::multipart_error;
use crate::error::ApiError;
use crate::openai::{check_model, json_body, route, run_one, sync_defaults};
use crate::App;

/// The transcription formats served (OpenAI's others need timestamps,
/// which the daemon's transcripts do not carry).
const TRANSCRIPT_FORMATS: &str = "json or text";

/// The stt task for a request's `language` and `prompt`; empty (the
/// daemon's own task, "Transcribe the audio.") when neither is given.
pub fn stt_task(language: Option<&str>, prompt: Option<&str>) -> String {
    let mut task = String::new();
    if let Some(l) = language {
        task = format!("Transcribe the audio. The speech is in the language {l}.");
    }
    if let Some(p) = prompt {
        if task.is_empty() {
            task.push_str("Transcribe the audio.");
        }
        task.push_str("\nEarlier speech, names and spellings to follow: ");
        task.push_str(p);
    }
    task
}

/// `POST /v1/audio/transcriptions` (multipart: `file`, `model`, optional
/// `language`, `prompt`, `response_format` json|text, `temperature`).
pub async fn transcriptions(
    AxState(app): AxState<Arc<App>>,
    form: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let mut form = form.map_err(|e| {
        ApiError::invalid(format!(
            "{}; send multipart/form-data with the fields `file` and `model`",
            e.body_text()
        ))
    })?;
    let mut fields: Map<String, Value> = Map::new();
    let mut file = None;
    while let Some(field) = form.next_field().await.map_err(multipart_error)? {
        let Some(name) = field.name().map(str::to_owned) else {
            continue;
        };
        if name == "file" {
            let fname = field.file_name().unwrap_or("audio").to_owned();
            file = Some((fname, field.bytes().await.map_err(multipart_error)?));
        } else {
            let text = field.text().await.map_err(multipart_error)?;
            fields.insert(name, Value::String(text));
        }
    }
    let model = check_model(&app, &fields)?;
    let text_field = |k: &str| fields.get(k).and_then(Value::as_str).filter(|s| !s.trim().is_empty());
    let as_text = match text_field("response_format") {
        None | Some("json") => false,
        Some("text") => true,
        Some(f @ ("verbose_json" | "srt" | "vtt" | "diarized_json")) => {
            return Err(ApiError::invalid(format!(
                "response_format {f:?} is not supported: the transcripts carry no timestamps; use {TRANSCRIPT_FORMATS}"
            ))
            .param("response_format"))
        }
        Some(f) => {
            return Err(
                ApiError::invalid(format!("response_format {f:?} is not one of {TRANSCRIPT_FORMATS}"))
                    .param("response_format"),
            )
        }
    };
    if text_field("stream") == Some("true") {
        return Err(ApiError::invalid("streamed transcriptions are not supported; leave stream unset").param("stream"));
    }
    let language = text_field("language");
    if let Some(l) = language {
        if l.len() > 16 || !l.chars().all(|c| c.is_ascii_alphabetic() || c == '-') {
            return Err(ApiError::invalid(format!(
                "language {l:?} is not a language code such as \"en\" (ISO-639-1)"
            ))
            .param("language"));
        }
    }
    let mut params = sync_defaults();
    if let Some(t) = text_field("temperature") {
        match t.parse::<f32>() {
            Ok(f) if (0.0..=1.0).contains(&f) => params.temp = Some(f),
            _ => {
                return Err(
                    ApiError::invalid(format!("temperature {t:?} must be a number from 0 to 1")).param("temperature"),
                )
            }
        }
    }
    params.model = route(&app, &model);
    let Some((fname, bytes)) = file else {
        return Err(ApiError::invalid("file is missing; send the audio as the multipart field `file`").param("file"));
    };
    let audio = check_audio(&fname, bytes.to_vec(), app.jobs.ws.settings())?;
    let mut sub = Submission::text(stt_task(language, text_field("prompt")));
    sub.job_type = JobType::Stt;
    sub.media = vec![audio];
    sub.params = params;
    let (id, fin) = run_one(&app, sub).await?;
    let Some(text) = fin.text() else {
        return Err(if fin.artifact.is_some() {
            ApiError::internal(format!("job {id} produced no transcript"))
        } else {
            fin.failure(&id)
        });
    };
    Ok(if as_text {
        ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
    } else {
        Json(json!({"text": text})).into_response()
    })
}

/// An uploaded audio file as the job's media: within the workspace's
/// `max_audio_bytes`, and a format the daemon decodes (by its first bytes).
fn check_audio(name: &str, bytes: Vec<u8>, limits: &nrvna_core::config::Settings) -> Result<MediaFile, ApiError> {
    let kind = MediaKind::Audio;
    let limit = kind.max_bytes(limits);
    let bad = |m: String| Err(ApiError::invalid(m).param("file"));
    if bytes.is_empty() {
        return bad(format!("file {name:?} is empty"));
    }
    if bytes.len() as u64 > limit {
        return bad(format!(
            "file {name:?} is {} bytes, over this workspace's limit of {limit} bytes for audio ({})",
            bytes.len(),
            kind.limit_var()
        ));
    }
    let Some(format) = kind.sniff(&bytes) else {
        return bad(format!(
            "file {name:?} is not {} (its first bytes are no known format); convert it first",
            kind.formats()
        ));
    };
    Ok(MediaFile {
        kind,
        ext: format.to_owned(),
        bytes,
    })
}

/// `POST /v1/audio/speech` (JSON: `input`, `model`, `voice`, optional
/// `response_format` wav, `speed` 1): the WAV the daemon's voice speaks.
pub async fn speech(
    AxState(app): AxState<Arc<App>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = json_body(body)?;
    let model = check_model(&app, &body)?;
    let input = match body.get("input") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(Value::String(_)) => {
            return Err(ApiError::invalid("input is empty; give the text to speak").param("input"))
        }
        _ => return Err(ApiError::invalid("input is missing or not a string").param("input")),
    };
    match body.get("voice") {
        Some(Value::String(v)) if !v.is_empty() => {}
        Some(Value::Object(o)) if o.get("id").is_some_and(Value::is_string) => {}
        _ => return Err(ApiError::invalid(
            "voice is missing; name one of OpenAI's voices (e.g. \"alloy\"): every name speaks with the daemon's voice",
        )
        .param("voice")),
    }
    match body.get("response_format") {
        None | Some(Value::Null) => {}
        Some(Value::String(f)) if f == "wav" => {}
        Some(f) => {
            return Err(ApiError::invalid(format!(
                "response_format {f} is not supported: the daemon speaks 24 kHz 16-bit mono WAV only; use \"wav\""
            ))
            .param("response_format"))
        }
    }
    match body.get("speed") {
        None | Some(Value::Null) => {}
        Some(v) if v.as_f64() == Some(1.0) => {}
        Some(v) => {
            return Err(ApiError::invalid(format!(
                "speed {v} is not supported: the daemon speaks at speed 1.0 only"
            ))
            .param("speed"))
        }
    }
    if body.get("stream_format").and_then(Value::as_str) == Some("sse") {
        return Err(ApiError::invalid("stream_format \"sse\" is not supported; use \"audio\"").param("stream_format"));
    }
    let mut sub = Submission::text(input);
    sub.job_type = JobType::Tts;
    sub.params = sync_defaults();
    sub.params.model = route(&app, &model);
    let (id, fin) = run_one(&app, sub).await?;
    match fin.artifact {
        Some((Artifact::Audio, wav)) => Ok(([(header::CONTENT_TYPE, "audio/wav")], wav).into_response()),
        Some((other, _)) => Err(ApiError::internal(format!(
            "job {id} produced {} instead of audio.wav; is the daemon serving a speech model (nrvnad OUTETTS.gguf WS --vocoder ...)?",
            other.file_name()
        ))),
        None => Err(fin.failure(&id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn language_and_prompt_become_the_stt_task() {
        assert_eq!(stt_task(None, None), "");
        assert_eq!(
            stt_task(Some("fr"), None),
            "Transcribe the audio. The speech is in the language fr."
        );
        let t = stt_task(None, Some("Nirvana, nrvnad"));
        assert!(t.starts_with("Transcribe the audio.\n"), "{t}");
        assert!(t.ends_with("Nirvana, nrvnad"), "{t}");
    }

    #[test]
    fn uploaded_audio_is_checked_by_size_and_first_bytes() {
        let s = nrvna_core::config::Settings {
            max_audio_bytes: 16,
            ..Default::default()
        };
        let wav = b"RIFF\0\0\0\0WAVEfmt ".to_vec();
        assert_eq!(check_audio("a.wav", wav.clone(), &s).unwrap().ext, "wav");
        let e = check_audio("a.wav", b"not audio at all".to_vec(), &s).unwrap_err();
        assert!(e.message.contains("\"a.wav\" is not wav"), "{}", e.message);
        assert_eq!(e.param.as_deref(), Some("file"));
        let e = check_audio("big.wav", [wav, vec![0; 16]].concat(), &s).unwrap_err();
        assert!(e.message.contains("over this workspace's limit of 16"), "{}", e.message);
        assert!(check_audio("e.wav", Vec::new(), &s).is_err());
    }
}
