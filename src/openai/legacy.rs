//! Legacy text completions (`POST /v1/completions`), judged by the same pipeline as chat: the
//! request is read as a chat request with the prompt as one user message, the upstream is
//! still called on its completions route with a completions body
//! ([`Wire::Completions`](crate::upstream::Wire::Completions)), so a base model continues the
//! raw prompt as before, and the judged result is written back in the completions shapes.
//!
//! One prompt per request: batched prompts (an array of several, or token arrays) and `echo`
//! (any value but absent, null or false) are refused with 400 `unsupported_parameter`, since
//! the guard judges one conversation per request and an echoed prompt is not generated text.
//! A `suffix` is judged with the prompt, since the model reads both.

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::{ChatChunk, ChatMessage, ChatRequest, ChatResponse, Choice, ChunkChoice, Delta, sse};

/// Why a completions request cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum LegacyError {
    /// The body is not JSON.
    #[error("the body is not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// A field has the wrong shape.
    #[error("{0}")]
    Invalid(String),
    /// A parameter rulegate cannot judge.
    #[error("`{param}` is not supported on a guarded completions route: {why}")]
    Unsupported {
        /// The parameter.
        param: &'static str,
        /// Why, and what to do instead.
        why: &'static str,
    },
}

impl LegacyError {
    /// The error `code` of the 400 response.
    pub fn code(&self) -> &'static str {
        match self {
            LegacyError::Json(_) => "invalid_json",
            LegacyError::Invalid(_) => "invalid_request",
            LegacyError::Unsupported { .. } => "unsupported_parameter",
        }
    }
}

/// Reads a completions request as a chat request: the prompt becomes one user message; every
/// other field is kept for the upstream call.
pub fn to_chat(body: &[u8]) -> Result<ChatRequest, LegacyError> {
    let value: Value = serde_json::from_slice(body).map_err(LegacyError::Json)?;
    let Value::Object(mut fields) = value else {
        return Err(LegacyError::Invalid("the body is not a JSON object".into()));
    };
    let prompt = match fields.remove("prompt") {
        Some(Value::String(text)) => text,
        Some(Value::Array(items)) if items.len() == 1 && items[0].is_string() => {
            items[0].as_str().unwrap_or_default().to_string()
        }
        Some(Value::Array(_)) => {
            return Err(LegacyError::Unsupported {
                param: "prompt",
                why: "batched or tokenized prompts cannot be judged; send one text prompt per request",
            });
        }
        None | Some(Value::Null) => String::new(),
        Some(_) => return Err(LegacyError::Invalid("`prompt` must be a string".into())),
    };
    // The upstream gets every other field as it came: one that another API reads as the
    // conversation must not ride along unjudged.
    if let Some(key) = ["messages", "input", "instructions"].into_iter().find(|k| fields.contains_key(*k)) {
        return Err(LegacyError::Invalid(format!("`{key}` does not belong in a completions request")));
    }
    // Only a plain "no" is safe: servers read `1`, `"true"` and the like as yes.
    if !matches!(fields.get("echo"), None | Some(Value::Null | Value::Bool(false))) {
        return Err(LegacyError::Unsupported { param: "echo", why: "an echoed prompt is not generated text" });
    }
    // The model reads the suffix; so must the judge (see `ChatRequest::conversation`).
    if !matches!(fields.get("suffix"), None | Some(Value::Null | Value::String(_))) {
        return Err(LegacyError::Invalid("`suffix` must be a string".into()));
    }
    let mut chat: ChatRequest = serde_json::from_value(json!({"messages": []}))
        .map_err(|e| LegacyError::Invalid(format!("cannot build the request: {e}")))?;
    chat.messages.push(ChatMessage::new("user", prompt));
    chat.stream = fields.remove("stream").and_then(|v| v.as_bool());
    chat.stream_options = fields.remove("stream_options").and_then(|v| serde_json::from_value(v).ok());
    chat.n = match fields.remove("n") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| LegacyError::Invalid("`n` must be a positive integer".into()))?,
        ),
    };
    chat.temperature = fields.remove("temperature").and_then(|v| v.as_f64());
    chat.extra = fields;
    Ok(chat)
}

/// The completions body the upstream gets for a chat request the guard prepared: the prompt
/// is the user message, after any system message the guard added (its guidance).
pub fn request_body(chat: &ChatRequest) -> Value {
    let prompt = chat.messages.iter().map(ChatMessage::text).collect::<Vec<_>>().join("\n\n");
    let mut body = Map::new();
    body.insert("prompt".into(), Value::String(prompt));
    for (key, value) in &chat.extra {
        body.insert(key.clone(), value.clone());
    }
    if let Some(stream) = chat.stream {
        body.insert("stream".into(), Value::Bool(stream));
    }
    if let Some(options) = &chat.stream_options {
        body.insert("stream_options".into(), serde_json::to_value(options).unwrap_or(Value::Null));
    }
    if let Some(n) = chat.n {
        body.insert("n".into(), Value::from(n));
    }
    if let Some(t) = chat.temperature {
        body.insert("temperature".into(), Value::from(t));
    }
    Value::Object(body)
}

/// A completions response from the upstream, read as a chat completion.
pub fn response_to_chat(value: Value) -> Result<ChatResponse, String> {
    let Value::Object(mut fields) = value else { return Err("not a JSON object".into()) };
    let choices = match fields.remove("choices") {
        Some(Value::Array(choices)) => choices,
        _ => return Err("no `choices`".into()),
    };
    let choices = choices
        .into_iter()
        .map(|c| {
            let Value::Object(mut c) = c else { return Err("a choice is not an object".to_string()) };
            let text = c.remove("text").and_then(|t| t.as_str().map(str::to_string)).unwrap_or_default();
            let index = c.remove("index").and_then(|i| i.as_u64()).unwrap_or(0) as u32;
            let finish_reason = c.remove("finish_reason").and_then(|f| f.as_str().map(str::to_string));
            Ok(Choice { index, message: ChatMessage::new("assistant", text), finish_reason, extra: c })
        })
        .collect::<Result<Vec<_>, _>>()?;
    fields.insert("choices".into(), Value::Array(Vec::new()));
    let mut response: ChatResponse = serde_json::from_value(Value::Object(fields)).map_err(|e| e.to_string())?;
    response.choices = choices;
    Ok(response)
}

/// A completions stream chunk from the upstream, read as a chat chunk.
pub fn chunk_to_chat(value: Value) -> Result<ChatChunk, String> {
    let Value::Object(mut fields) = value else { return Err("not a JSON object".into()) };
    let choices = match fields.remove("choices") {
        Some(Value::Array(choices)) => choices,
        _ => Vec::new(),
    };
    let choices = choices
        .into_iter()
        .map(|c| {
            let Value::Object(mut c) = c else { return Err("a choice is not an object".to_string()) };
            let text = c.remove("text").and_then(|t| t.as_str().map(str::to_string));
            let index = c.remove("index").and_then(|i| i.as_u64()).unwrap_or(0) as u32;
            let finish_reason = c.remove("finish_reason").and_then(|f| f.as_str().map(str::to_string));
            Ok(ChunkChoice {
                index,
                delta: Delta { role: None, content: text, extra: Map::new() },
                finish_reason,
                extra: c,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    fields.insert("choices".into(), Value::Array(Vec::new()));
    let mut chunk: ChatChunk = serde_json::from_value(Value::Object(fields)).map_err(|e| e.to_string())?;
    chunk.choices = choices;
    Ok(chunk)
}

/// The completions response for a judged chat completion.
pub fn from_chat(chat: &ChatResponse) -> Value {
    let choices: Vec<Value> = chat
        .choices
        .iter()
        .map(|c| {
            json!({"index": c.index, "text": c.message.text(), "finish_reason": c.finish_reason,
                "logprobs": c.extra.get("logprobs").cloned().unwrap_or(Value::Null)})
        })
        .collect();
    let mut out = json!({"id": chat.id, "object": "text_completion", "created": chat.created, "model": chat.model,
        "choices": choices});
    if let Some(usage) = &chat.usage {
        out["usage"] = serde_json::to_value(usage).unwrap_or(Value::Null);
    }
    out
}

/// Rewrites one frame of a judged chat stream as a completions stream frame; comments,
/// `[DONE]` and error events pass as they are.
pub fn stream_frame(frame: Bytes) -> Bytes {
    let Some(data) = frame.strip_prefix(b"data: ").and_then(|d| d.strip_suffix(b"\n\n")) else { return frame };
    let Ok(value) = serde_json::from_slice::<Value>(data) else { return frame };
    if value.get("error").is_some() {
        return frame;
    }
    let usage = value.get("usage").cloned();
    let Ok(chunk) = serde_json::from_value::<ChatChunk>(value) else { return frame };
    let choices: Vec<Value> = chunk
        .choices
        .iter()
        .map(|c| {
            json!({"index": c.index, "text": c.delta.content.clone().unwrap_or_default(),
                "finish_reason": c.finish_reason, "logprobs": c.extra.get("logprobs").cloned().unwrap_or(Value::Null)})
        })
        .collect();
    let mut out = json!({"id": chunk.id, "object": "text_completion", "created": chunk.created, "model": chunk.model,
        "choices": choices});
    if let Some(usage) = usage {
        out["usage"] = usage;
    }
    sse::json_event(&out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_becomes_one_user_message_and_back() {
        let chat = to_chat(
            br#"{"model":"m","prompt":"Once upon","max_tokens":5,"suffix":"end","stream":true,"n":2,"temperature":0}"#,
        )
        .unwrap();
        assert_eq!(chat.messages.len(), 1);
        assert_eq!(chat.messages[0].text(), "Once upon");
        assert!(chat.is_stream());
        assert_eq!(chat.choices(), 2);
        let body = request_body(&chat);
        assert_eq!(body["prompt"], "Once upon");
        assert_eq!(body["suffix"], "end");
        assert_eq!(body["max_tokens"], 5);
        assert_eq!(body["n"], 2);
        assert!(body.get("messages").is_none());
        // The judge reads the suffix with the prompt, as the model does.
        let conversation = chat.conversation();
        assert_eq!(conversation.len(), 1);
        assert_eq!(conversation[0].content, "Once upon\nend");
        let single = to_chat(br#"{"prompt":["x"]}"#).unwrap();
        assert_eq!(single.messages[0].text(), "x");
    }

    #[test]
    fn what_cannot_be_judged_is_refused() {
        for body in [&br#"{"prompt":["a","b"]}"#[..], br#"{"prompt":[[1,2]]}"#, br#"{"prompt":"a","echo":true}"#] {
            assert_eq!(to_chat(body).unwrap_err().code(), "unsupported_parameter");
        }
        // Servers read these as yes too: only absent, null and false are safe.
        for echo in ["1", "\"true\"", "\"false\"", "0", "[]", "{}"] {
            let body = format!(r#"{{"prompt":"a","echo":{echo}}}"#);
            assert_eq!(to_chat(body.as_bytes()).unwrap_err().code(), "unsupported_parameter", "echo {echo}");
        }
        for echo in ["null", "false"] {
            assert!(to_chat(format!(r#"{{"prompt":"a","echo":{echo}}}"#).as_bytes()).is_ok(), "echo {echo}");
        }
        assert_eq!(to_chat(br#"{"prompt":"a","suffix":3}"#).unwrap_err().code(), "invalid_request");
        assert_eq!(to_chat(br#"{"prompt":3}"#).unwrap_err().code(), "invalid_request");
        assert_eq!(to_chat(br#"{"prompt":"a","messages":[]}"#).unwrap_err().code(), "invalid_request");
        assert_eq!(to_chat(b"[").unwrap_err().code(), "invalid_json");
    }

    #[test]
    fn responses_and_chunks_round_trip() {
        let upstream = json!({"id": "cmpl-1", "object": "text_completion", "created": 3, "model": "m",
            "choices": [{"index": 0, "text": " a time", "finish_reason": "length", "logprobs": null}],
            "usage": {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}});
        let chat = response_to_chat(upstream).unwrap();
        assert_eq!(chat.choices[0].message.text(), " a time");
        let back = from_chat(&chat);
        assert_eq!(back["object"], "text_completion");
        assert_eq!(back["choices"][0]["text"], " a time");
        assert_eq!(back["choices"][0]["finish_reason"], "length");
        assert_eq!(back["usage"]["total_tokens"], 4);

        let chunk =
            chunk_to_chat(json!({"id": "c", "choices": [{"index": 0, "text": "Hi", "finish_reason": null}]})).unwrap();
        assert_eq!(chunk.choices[0].delta.content.as_deref(), Some("Hi"));
        let frame = stream_frame(sse::json_event(&chunk));
        let text = std::str::from_utf8(&frame).unwrap();
        let value: Value = serde_json::from_str(text.trim().strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(value["choices"][0]["text"], "Hi");
        assert_eq!(value["object"], "text_completion");
        for passthrough in [&b": rulegate action=pass\n\n"[..], sse::DONE, b"data: {\"error\":{\"message\":\"x\"}}\n\n"]
        {
            assert_eq!(&stream_frame(Bytes::copy_from_slice(passthrough))[..], passthrough);
        }
    }
}
