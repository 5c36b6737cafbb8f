//! OpenAI's error object (`{"error": {"message", "type", "param", "code"}}`)
//! with the status code that goes with it. Every handler returns
//! `Result<_, ApiError>`, so every bad request gets one and the server goes on.
//! A body never names where the workspace lives: its absolute path is
//! written `WS` there (the log on stderr keeps the whole message).

use std::path::Path;
use std::sync::RwLock;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

#[derive(Clone, Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub code: Option<&'static str>,
    pub param: Option<String>,
    pub message: String,
    /// Seconds a client should wait before trying again (`Retry-After`).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            kind,
            code: None,
            param: None,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400: the request cannot be served as sent.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "invalid_request_error", message).code("not_found")
    }

    /// 500: something on our side; the message says what.
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    pub fn code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    pub fn param(mut self, param: impl Into<String>) -> ApiError {
        self.param = Some(param.into());
        self
    }

    /// The JSON body, with the workspace's absolute path written `WS`.
    pub fn body(&self) -> serde_json::Value {
        json!({"error": {
            "message": redact(&self.message),
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

/// The absolute paths of the workspaces served, longest first.
static ROOTS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Error bodies will write `root` (absolute as given, and canonical) as `WS`.
pub fn redact_workspace(root: &Path) {
    let mut forms = Vec::new();
    if let Ok(abs) = std::path::absolute(root) {
        forms.push(abs);
    }
    if let Ok(canon) = root.canonicalize() {
        forms.push(canon);
    }
    let mut roots = ROOTS.write().unwrap_or_else(|e| e.into_inner());
    for f in forms {
        let f = f.to_string_lossy().trim_end_matches('/').to_owned();
        // "/" itself would turn every slash into WS.
        if f.len() > 1 && !roots.contains(&f) {
            roots.push(f);
        }
    }
    roots.sort_by_key(|r| std::cmp::Reverse(r.len()));
}

/// The message with every workspace root written `WS`.
pub fn redact(message: &str) -> String {
    let roots = ROOTS.read().unwrap_or_else(|e| e.into_inner());
    roots
        .iter()
        .fold(message.to_owned(), |m, root| m.replace(root.as_str(), "WS"))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = %self.status, "{}", self.message);
        } else {
            tracing::debug!(status = %self.status, "{}", self.message);
        }
        let mut r = (self.status, Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut().insert(axum::http::header::RETRY_AFTER, s.into());
        }
        r
    }
}

impl From<nrvna_core::openai::RequestError> for ApiError {
    fn from(e: nrvna_core::openai::RequestError) -> ApiError {
        let mut a = ApiError::invalid(e.message);
        a.param = e.param;
        a
    }
}

impl From<nrvna_core::limits::AdmitError> for ApiError {
    fn from(e: nrvna_core::limits::AdmitError) -> ApiError {
        match e {
            nrvna_core::limits::AdmitError::Full { .. } => {
                let mut a =
                    ApiError::new(StatusCode::TOO_MANY_REQUESTS, "requests", e.to_string()).code("rate_limit_exceeded");
                a.retry_after = Some(10);
                a
            }
            other => ApiError::internal(other.to_string()),
        }
    }
}

impl From<nrvna_core::SubmitError> for ApiError {
    fn from(e: nrvna_core::SubmitError) -> ApiError {
        match e {
            nrvna_core::SubmitError::Io { .. } => ApiError::internal(format!("publishing the job failed: {e}")),
            // OpenAI's answer to a string longer than a field allows.
            nrvna_core::SubmitError::ParamsTooLarge { .. } => ApiError::invalid(e.to_string())
                .param("messages")
                .code("string_above_max_length"),
            nrvna_core::SubmitError::PromptTooLarge { .. } => {
                ApiError::invalid(e.to_string()).code("string_above_max_length")
            }
            other => ApiError::invalid(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_write_the_workspace_as_ws() {
        let dir = std::env::temp_dir().join("nrvna-api-redact-test");
        std::fs::create_dir_all(&dir).unwrap();
        redact_workspace(&dir);
        let canon = dir.canonicalize().unwrap();
        let e = ApiError::internal(format!("reading {}/api/files/x.data: Is a directory", canon.display()));
        let msg = e.body()["error"]["message"].as_str().unwrap().to_owned();
        assert_eq!(msg, "reading WS/api/files/x.data: Is a directory");
        assert!(
            e.message.contains(&*canon.to_string_lossy()),
            "the log keeps the whole message"
        );
    }
}
