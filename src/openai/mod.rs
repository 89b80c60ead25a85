//! The OpenAI chat-completions wire format, as far as rulegate reads it ([`responses`]
//! translates the Responses API to it and back, [`legacy`] the text completions API). Every struct keeps
//! the fields it does not know in `extra`, so requests and responses pass through unchanged
//! apart from what the guard deliberately rewrites.

pub mod chunks;
pub mod judged;
pub mod legacy;
pub mod responses;
pub mod sse;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `POST /v1/chat/completions` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The conversation so far.
    pub messages: Vec<ChatMessage>,
    /// Whether the caller wants server-sent events; absent means no.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Streaming options; only `include_usage` is read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<StreamOptions>,
    /// Choices wanted; absent means one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    /// Sampling temperature; regeneration and best-of-n may override it as the policy says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Everything else (`model`, `max_tokens`, `tools`, ...), forwarded as it came.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatRequest {
    /// Whether the caller asked for a stream.
    pub fn is_stream(&self) -> bool {
        self.stream.unwrap_or(false)
    }

    /// Choices wanted: `n`, at least 1.
    pub fn choices(&self) -> u32 {
        self.n.unwrap_or(1).max(1)
    }

    /// Whether a streamed response should end with a usage chunk.
    pub fn include_usage(&self) -> bool {
        self.stream_options.as_ref().and_then(|o| o.include_usage).unwrap_or(false)
    }

    /// The requested model name; empty when absent.
    pub fn model(&self) -> &str {
        self.extra.get("model").and_then(Value::as_str).unwrap_or("")
    }

    /// The conversation as the guard reads it: roles and plain text. A `suffix` (legacy
    /// completions: the text after the insertion point) is read as part of the last message,
    /// since the model reads it too.
    pub fn conversation(&self) -> Vec<crate::conversation::Message> {
        let mut conversation: Vec<crate::conversation::Message> =
            self.messages.iter().map(|m| crate::conversation::Message::new(m.role.clone(), m.text())).collect();
        if let Some(suffix) = self.extra.get("suffix").and_then(Value::as_str).filter(|s| !s.is_empty()) {
            match conversation.last_mut() {
                Some(last) => {
                    last.content.push('\n');
                    last.content.push_str(suffix);
                }
                None => conversation.push(crate::conversation::Message::new("user", suffix)),
            }
        }
        conversation
    }

    /// Whether a message carries content the judge cannot read: a content part other than
    /// text (an image, audio, a file, ...).
    pub fn has_unreadable_content(&self) -> bool {
        self.messages.iter().any(|m| match &m.content {
            Value::Array(parts) => parts.iter().any(|p| match p {
                Value::String(_) => false,
                Value::Object(o) => !o.get("text").is_some_and(Value::is_string),
                _ => true,
            }),
            _ => false,
        })
    }
}

/// `stream_options` of a request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StreamOptions {
    /// Ask for a final chunk carrying token usage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_usage: Option<bool>,
    /// Other options, forwarded as they came.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One message of a request, or of a response choice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    /// A string, an array of content parts, or null (e.g. with tool calls).
    #[serde(default)]
    pub content: Value,
    /// Other fields (`name`, `tool_calls`, ...), forwarded as they came.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatMessage {
    /// A message with plain-text content.
    pub fn new(role: &str, text: impl Into<String>) -> Self {
        ChatMessage { role: role.to_string(), content: Value::String(text.into()), extra: Map::new() }
    }

    /// Text content: the string, or the `text` of every text part joined by newlines.
    pub fn text(&self) -> String {
        content_text(&self.content)
    }

    /// What the guard judges: the text content, then every tool call as `name(arguments)`
    /// (`name(input)` for custom tools) on a line of its own, then every string of the other
    /// fields (`refusal`, reasoning, the audio transcript, ...). A tool call's arguments are
    /// generated text like any other, and can carry what the policy forbids. Upstream answers
    /// are first brought to what is judged by [`judged::sanitize_message`].
    pub fn judged_text(&self) -> String {
        judged::judged_text(self)
    }

    /// Whether the message calls tools (`tool_calls` non-empty, or a legacy `function_call`).
    pub fn has_tool_calls(&self) -> bool {
        self.extra.get("tool_calls").is_some_and(|t| t.as_array().is_some_and(|a| !a.is_empty()))
            || self.extra.get("function_call").is_some_and(|f| !f.is_null())
    }
}

/// Text of a `content` value: the string itself, or the text of every string or `text`
/// part of an array, joined by newlines; empty for null and anything else.
pub fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| match p {
                Value::String(s) => Some(s.as_str()),
                Value::Object(o) => o.get("text").and_then(Value::as_str),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// A non-streaming chat completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    /// Completion id; empty when the upstream sent none.
    #[serde(default)]
    pub id: String,
    /// `chat.completion` (the default when absent).
    #[serde(default = "completion_object")]
    pub object: String,
    /// Creation time, seconds since the Unix epoch.
    #[serde(default)]
    pub created: i64,
    /// The model that answered.
    #[serde(default)]
    pub model: String,
    /// The completions, one per choice index.
    pub choices: Vec<Choice>,
    /// Tokens used; in responses the guard delivers, the sum over every upstream call it made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Other fields (`system_fingerprint`, ...), forwarded as they came.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn completion_object() -> String {
    "chat.completion".into()
}

/// One completion of a response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Choice {
    /// Position of the choice (0 to `n - 1`).
    #[serde(default)]
    pub index: u32,
    /// The assistant message.
    pub message: ChatMessage,
    /// Why generation stopped: `stop`, `length`, `tool_calls`, `content_filter`...
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// Other fields (`logprobs`, ...), forwarded as they came.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Token counts of a completion, summed with `+=`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the prompt.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Tokens generated.
    #[serde(default)]
    pub completion_tokens: u64,
    /// Both together.
    #[serde(default)]
    pub total_tokens: u64,
    /// Other counts (`prompt_tokens_details`, `completion_tokens_details`, ...), summed
    /// number by number.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, other: Usage) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.total_tokens += other.total_tokens;
        add_counts(&mut self.extra, other.extra);
    }
}

/// Adds the numbers of `other` into `total`, object by object; other values keep the first seen.
fn add_counts(total: &mut Map<String, Value>, other: Map<String, Value>) {
    for (key, value) in other {
        match (total.get_mut(&key), value) {
            (None, value) => {
                total.insert(key, value);
            }
            (Some(Value::Object(t)), Value::Object(o)) => add_counts(t, o),
            (Some(t @ Value::Number(_)), Value::Number(o)) => {
                let sum = match (t.as_u64(), o.as_u64()) {
                    (Some(a), Some(b)) => Value::from(a.saturating_add(b)),
                    _ => serde_json::Number::from_f64(t.as_f64().unwrap_or(0.0) + o.as_f64().unwrap_or(0.0))
                        .map_or(Value::Null, Value::Number),
                };
                *t = sum;
            }
            (Some(Value::Null), value) => {
                total.insert(key, value);
            }
            _ => {}
        }
    }
}

/// One server-sent event of a streamed completion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatChunk {
    /// Completion id, the same on every chunk of a stream.
    #[serde(default)]
    pub id: String,
    /// `chat.completion.chunk` (the default when absent).
    #[serde(default = "chunk_object")]
    pub object: String,
    /// Creation time, seconds since the Unix epoch.
    #[serde(default)]
    pub created: i64,
    /// The model that answered.
    #[serde(default)]
    pub model: String,
    /// Deltas for some choices; empty on the usage chunk.
    #[serde(default)]
    pub choices: Vec<ChunkChoice>,
    /// Present on the final chunk when `stream_options.include_usage` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Other fields, forwarded as they came.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn chunk_object() -> String {
    "chat.completion.chunk".into()
}

/// One choice's part of a stream chunk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkChoice {
    /// Which choice this delta extends.
    #[serde(default)]
    pub index: u32,
    /// The new text (or role) of the choice.
    #[serde(default)]
    pub delta: Delta,
    /// Set on the choice's last chunk.
    #[serde(default)]
    pub finish_reason: Option<String>,
    /// Other fields, forwarded as they came.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// What a chunk adds to a choice's message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    /// The message's role, usually on the first chunk only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Text to append. An array of content parts is read as the text of its text parts
    /// (the others cannot be judged and are dropped); any other value as none.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "delta_content")]
    pub content: Option<String>,
    /// Other fields (`tool_calls`, ...), forwarded as they came.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A delta's `content`: a string, an array of parts (their text), or nothing. Never fails, so
/// an unusual delta cannot fail a stream (and quote it in an error).
fn delta_content<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(deserializer)? {
        Value::String(s) => Some(s),
        parts @ Value::Array(_) => Some(content_text(&parts)),
        _ => None,
    })
}

/// The body of an OpenAI-style error response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The `error` object of an error response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// A human-readable explanation.
    pub message: String,
    /// The error `type`, e.g. `invalid_request_error`, `server_error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The request parameter at fault, if any; rulegate leaves it null.
    pub param: Option<String>,
    /// A machine-readable code, e.g. `unknown_response_type`.
    pub code: Option<String>,
}

/// The error `type` of an OpenAI-style error body, as rulegate writes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// `invalid_request_error`: the request (or what it asked for) cannot be served.
    InvalidRequest,
    /// `permission_error`: the gateway does not allow this request.
    Permission,
    /// `server_error`: rulegate itself could not serve the request.
    Server,
    /// `upstream_error`: the model API failed.
    Upstream,
}

impl ErrorKind {
    /// The `type` field's text.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "invalid_request_error",
            ErrorKind::Permission => "permission_error",
            ErrorKind::Server => "server_error",
            ErrorKind::Upstream => "upstream_error",
        }
    }
}

impl ErrorBody {
    /// An error with the given `type`, `code` and message, and no `param`.
    pub fn new(kind: ErrorKind, code: &str, message: impl Into<String>) -> Self {
        ErrorBody {
            error: ErrorDetail {
                message: message.into(),
                kind: kind.as_str().into(),
                param: None,
                code: Some(code.into()),
            },
        }
    }

    /// The body as JSON bytes.
    pub fn to_bytes(&self) -> bytes::Bytes {
        bytes::Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }
}

/// Seconds since the Unix epoch, for the `created` field of responses rulegate writes itself.
pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// A fresh completion id for responses rulegate writes itself.
pub(crate) fn completion_id() -> String {
    format!("chatcmpl-rulegate-{:016x}", fastrand::u64(..))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_round_trip() {
        let text = r#"{"model":"m","messages":[{"role":"user","content":"hi","name":"bob"}],"max_tokens":5,"tools":[{"type":"function"}],"stream":true,"stream_options":{"include_usage":true}}"#;
        let req: ChatRequest = serde_json::from_str(text).unwrap();
        assert_eq!(req.model(), "m");
        assert!(req.is_stream() && req.include_usage());
        let back: Value = serde_json::to_value(&req).unwrap();
        assert_eq!(back, serde_json::from_str::<Value>(text).unwrap());
    }

    #[test]
    fn usage_details_are_kept_and_summed() {
        let a: Usage = serde_json::from_str(r#"{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5,"prompt_tokens_details":{"cached_tokens":1},"completion_tokens_details":{"reasoning_tokens":2}}"#).unwrap();
        let b: Usage = serde_json::from_str(r#"{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7,"prompt_tokens_details":{"cached_tokens":3,"audio_tokens":0}}"#).unwrap();
        let mut total = a;
        total += b;
        let v = serde_json::to_value(&total).unwrap();
        assert_eq!(v["total_tokens"], 12);
        assert_eq!(v["prompt_tokens_details"], serde_json::json!({"cached_tokens": 4, "audio_tokens": 0}));
        assert_eq!(v["completion_tokens_details"]["reasoning_tokens"], 2);
    }

    #[test]
    fn content_parts_become_text() {
        let m: ChatMessage = serde_json::from_str(r#"{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{}},{"type":"text","text":"b"}]}"#).unwrap();
        assert_eq!(m.text(), "a\nb");
        let m: ChatMessage =
            serde_json::from_str(r#"{"role":"assistant","content":null,"tool_calls":[{"id":"1"}]}"#).unwrap();
        assert_eq!(m.text(), "");
        assert!(m.has_tool_calls());
    }

    #[test]
    fn unreadable_parts_are_noticed_and_stream_parts_are_read() {
        let text: ChatRequest = serde_json::from_str(
            r#"{"messages":[{"role":"user","content":[{"type":"text","text":"a"},"b"]},{"role":"user","content":"c"}]}"#,
        )
        .unwrap();
        assert!(!text.has_unreadable_content());
        for part in [r#"{"type":"image_url","image_url":{"url":"x"}}"#, r#"{"type":"input_audio"}"#, "3"] {
            let body = format!(r#"{{"messages":[{{"role":"user","content":[{{"type":"text","text":"a"}},{part}]}}]}}"#);
            let request: ChatRequest = serde_json::from_str(&body).unwrap();
            assert!(request.has_unreadable_content(), "{part}");
        }
        // A delta's content as parts is its text; anything else is none, never an error.
        let delta: Delta =
            serde_json::from_str(r#"{"content":[{"type":"text","text":"x"},{"type":"image"}]}"#).unwrap();
        assert_eq!(delta.content.as_deref(), Some("x"));
        let delta: Delta = serde_json::from_str(r#"{"content":{"a":1}}"#).unwrap();
        assert_eq!(delta.content, None);
    }
}
