//! The HTTP plumbing both providers share: one POST whose answer is an SSE
//! stream, with bounded waits and the providers' error bodies turned into
//! [`ModelError`]s.
//!
//! Why a bound on every wait rather than one total timeout: a long answer
//! may legitimately stream for minutes, but a provider that goes silent (no
//! headers, or no bytes for the whole timeout) must end the user's turn with
//! an error instead of hanging it.

use std::{collections::VecDeque, time::Duration};

use crate::{
    model::ModelError,
    sse::{SseError, SseEvent, SseParser},
};

/// Longest error body we read; the part that matters is a few hundred bytes.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// `{base_url}/{path}` with or without a trailing slash on the base.
pub(crate) fn endpoint(base_url: &str, path: &str) -> Result<url::Url, ModelError> {
    let joined = format!("{}/{path}", base_url.trim_end_matches('/'));
    url::Url::parse(&joined)
        .map_err(|e| ModelError::Transport(format!("invalid provider URL `{base_url}`: {e}")))
}

/// A reqwest client for one provider.
pub(crate) fn client(timeout: Duration) -> Result<reqwest::Client, ModelError> {
    reqwest::Client::builder()
        .connect_timeout(timeout)
        .build()
        .map_err(|e| ModelError::Transport(format!("cannot build the HTTP client: {e}")))
}

/// Sends `request` and waits at most `timeout` for the response headers; a
/// non-2xx answer becomes [`ModelError::Provider`] from its error body.
pub(crate) async fn send(
    request: reqwest::RequestBuilder,
    timeout: Duration,
) -> Result<EventStream, ModelError> {
    let response = match tokio::time::timeout(timeout, request.send()).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => return Err(ModelError::Transport(describe(&e))),
        Err(_) => return Err(timed_out(timeout)),
    };
    let status = response.status();
    if !status.is_success() {
        let body = read_error_body(response, timeout).await;
        return Err(provider_error(Some(status.as_u16()), &body));
    }
    Ok(EventStream {
        response,
        parser: SseParser::new(),
        pending: VecDeque::new(),
        timeout,
    })
}

/// [`send`], telling `key` when the provider refused it (401/403) so the
/// next request reads the key afresh.
pub(crate) async fn send_keyed(
    request: reqwest::RequestBuilder,
    timeout: Duration,
    key: &dyn crate::model::KeySource,
) -> Result<EventStream, ModelError> {
    let sent = send(request, timeout).await;
    if let Err(e) = &sent
        && e.is_key_refused()
    {
        key.refused().await;
    }
    sent
}

/// An error body (`{"error": {"type", "message", "code"}}`, the shape both
/// providers use) as a [`ModelError::Provider`]; anything else keeps the
/// start of the raw body as the message so the user still sees something.
pub(crate) fn provider_error(status: Option<u16>, body: &str) -> ModelError {
    let json: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let error = json.as_ref().and_then(|j| j.get("error"));
    let field = |name: &str| {
        error
            .and_then(|e| e.get(name))
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
    };
    let kind = field("type").or_else(|| field("code")).unwrap_or_default();
    let message = field("message")
        .or_else(|| error.and_then(serde_json::Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| truncate(body.trim(), 300));
    ModelError::Provider {
        status,
        kind,
        message,
    }
}

async fn read_error_body(mut response: reqwest::Response, timeout: Duration) -> String {
    let mut body = Vec::new();
    while body.len() < MAX_ERROR_BODY {
        match tokio::time::timeout(timeout, response.chunk()).await {
            Ok(Ok(Some(chunk))) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

fn describe(e: &reqwest::Error) -> String {
    // reqwest's Display stops at "error sending request"; the cause (refused
    // connection, DNS failure, TLS) is what the user can act on.
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn timed_out(timeout: Duration) -> ModelError {
    ModelError::Transport(format!("no answer within {} ms", timeout.as_millis()))
}

/// The first `max` characters of `text`, marked when cut.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", text.get(..at).unwrap_or(text)),
        None => text.to_owned(),
    }
}

/// The SSE events of a streaming response.
pub(crate) struct EventStream {
    response: reqwest::Response,
    parser: SseParser,
    pending: VecDeque<SseEvent>,
    timeout: Duration,
}

// === impl EventStream ===

impl EventStream {
    /// The next event; `None` when the stream ended (callers decide whether
    /// it ended early). Waits at most the timeout for each chunk.
    pub(crate) async fn next(&mut self) -> Result<Option<SseEvent>, ModelError> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(Some(event));
            }
            let chunk = match tokio::time::timeout(self.timeout, self.response.chunk()).await {
                Ok(Ok(Some(chunk))) => chunk,
                Ok(Ok(None)) => return Ok(None),
                Ok(Err(e)) => return Err(ModelError::Transport(describe(&e))),
                Err(_) => return Err(timed_out(self.timeout)),
            };
            let events = self.parser.push(&chunk).map_err(|e| match e {
                SseError::LineTooLong => {
                    ModelError::Protocol("an event stream line is too long".into())
                }
                SseError::NotUtf8 => ModelError::Protocol("the event stream is not UTF-8".into()),
            })?;
            self.pending.extend(events);
        }
    }
}

/// Parses an event's JSON data, naming the event on failure.
pub(crate) fn event_json(event: &SseEvent) -> Result<serde_json::Value, ModelError> {
    serde_json::from_str(&event.data).map_err(|e| {
        ModelError::Protocol(format!(
            "event `{}` carries invalid JSON: {e}",
            if event.event.is_empty() {
                "message"
            } else {
                &event.event
            }
        ))
    })
}

/// Parses a tool call's accumulated argument text (empty means no arguments).
pub(crate) fn tool_arguments(tool: &str, text: &str) -> Result<serde_json::Value, ModelError> {
    if text.trim().is_empty() {
        return Ok(serde_json::json!({}));
    }
    serde_json::from_str(text).map_err(|e| {
        ModelError::Protocol(format!(
            "the arguments of tool call `{tool}` are not valid JSON: {e}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_of_both_providers_and_of_proxies() {
        let check = |body: &str, kind: &str, message: &str| {
            assert_eq!(
                provider_error(Some(500), body),
                ModelError::Provider {
                    status: Some(500),
                    kind: kind.into(),
                    message: message.into(),
                }
            );
        };
        check(
            r#"{"type":"error","error":{"type":"api_error","message":"Internal server error"}}"#,
            "api_error",
            "Internal server error",
        );
        check(
            r#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#,
            "invalid_request_error",
            "Incorrect API key provided",
        );
        check(
            r#"{"error":{"message":"model not loaded","type":null,"code":"model_not_found"}}"#,
            "model_not_found",
            "model not loaded",
        );
        check(
            "<html>502 Bad Gateway</html>\n",
            "",
            "<html>502 Bad Gateway</html>",
        );
        check(r#"{"error":"upstream down"}"#, "", "upstream down");
    }
}
