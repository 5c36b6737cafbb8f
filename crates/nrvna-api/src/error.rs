//! OpenAI's error object (`{"error": {"message", "type", "param", "code"}}`)
//! with the status code that goes with it. Every handler returns
//! `Result<_, ApiError>`, so every bad request gets one and the server goes on.

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

    pub fn body(&self) -> serde_json::Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
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
