//! The Responses API (`POST /v1/responses`), served by translation to chat completions so
//! that the same pipeline judges it: the request becomes a chat request (instructions as a
//! system message, input items as messages, function tools and calls mapped), the judged chat
//! completion becomes a `response` object, and a judged chat stream becomes the Responses
//! event stream (`response.created` ... `response.completed`).
//!
//! Stateless only: rulegate keeps no conversations, so `previous_response_id`,
//! `conversation`, background runs and built-in tools (web search, file search, ...) are
//! refused with 400 `unsupported_parameter` rather than silently dropped. Parameters with no
//! effect on the generated text (`store`, `metadata`, `include`, `truncation`) are accepted
//! and echoed.

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::{ChatMessage, ChatRequest, ChatResponse, StreamOptions, Usage, sse};

/// Why a Responses request cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ResponsesError {
    /// The body is not JSON.
    #[error("the body is not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// A field has the wrong shape.
    #[error("{0}")]
    Invalid(String),
    /// A parameter needs server-side state or a tool rulegate cannot judge.
    #[error("`{param}` is not supported by rulegate's Responses API: {why}")]
    Unsupported {
        /// The parameter.
        param: String,
        /// Why, and what to do instead.
        why: &'static str,
    },
}

impl ResponsesError {
    /// The error `code` of the 400 response.
    pub fn code(&self) -> &'static str {
        match self {
            ResponsesError::Json(_) => "invalid_json",
            ResponsesError::Invalid(_) => "invalid_request",
            ResponsesError::Unsupported { .. } => "unsupported_parameter",
        }
    }
}

/// What the `response` object echoes of the request.
#[derive(Debug, Clone, Default)]
pub struct Echo {
    fields: Map<String, Value>,
}

/// Fields copied as they are into the chat request.
const SAME_NAME: &[&str] = &[
    "model",
    "temperature",
    "top_p",
    "parallel_tool_calls",
    "user",
    "service_tier",
    "safety_identifier",
    "prompt_cache_key",
];
/// Accepted, echoed, and not forwarded: they change nothing about the generated text.
const ECHO_ONLY: &[&str] = &["store", "metadata", "include", "truncation"];

/// Translates a Responses request body into a chat request, and what the answer echoes.
pub fn to_chat(body: &[u8]) -> Result<(ChatRequest, Echo), ResponsesError> {
    let value: Value = serde_json::from_slice(body).map_err(ResponsesError::Json)?;
    let Value::Object(request) = value else {
        return Err(ResponsesError::Invalid("the body is not a JSON object".into()));
    };
    let mut extra = Map::new();
    let mut echo = Map::new();
    let mut messages = Vec::new();
    let mut stream = None;
    for (key, value) in &request {
        match key.as_str() {
            "input" | "instructions" => {}
            "stream" => stream = value.as_bool(),
            "max_output_tokens" => {
                if !value.is_null() {
                    extra.insert("max_tokens".into(), value.clone());
                }
            }
            "tools" => {
                extra.insert("tools".into(), Value::Array(tools(value)?));
            }
            "tool_choice" => {
                extra.insert("tool_choice".into(), tool_choice(value)?);
            }
            "text" => {
                if let Some(format) = value.get("format").filter(|f| !f.is_null())
                    && let Some(rf) = response_format(format)?
                {
                    extra.insert("response_format".into(), rf);
                }
            }
            "reasoning" => {
                if let Some(effort) = value.get("effort").filter(|e| !e.is_null()) {
                    extra.insert("reasoning_effort".into(), effort.clone());
                }
            }
            "background" if value.as_bool() != Some(true) => {}
            "previous_response_id" | "conversation" if value.is_null() => {}
            "previous_response_id" | "conversation" => {
                return Err(ResponsesError::Unsupported {
                    param: key.clone(),
                    why: "rulegate keeps no conversation state; send the whole conversation in `input`",
                });
            }
            "background" => {
                return Err(ResponsesError::Unsupported {
                    param: key.clone(),
                    why: "background responses are not judged; send the request in the foreground",
                });
            }
            k if SAME_NAME.contains(&k) => {
                extra.insert(k.to_string(), value.clone());
            }
            k if ECHO_ONLY.contains(&k) => {}
            other => {
                return Err(ResponsesError::Unsupported {
                    param: other.to_string(),
                    why: "the parameter has no chat-completions equivalent that rulegate can judge",
                });
            }
        }
        if key != "input" && key != "stream" {
            echo.insert(key.clone(), value.clone());
        }
    }
    if let Some(instructions) = request.get("instructions").filter(|v| !v.is_null()) {
        let text =
            instructions.as_str().ok_or_else(|| ResponsesError::Invalid("`instructions` must be a string".into()))?;
        messages.push(ChatMessage::new("system", text));
    }
    match request.get("input") {
        Some(Value::String(text)) => messages.push(ChatMessage::new("user", text.as_str())),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                messages.push(input_item(item).map_err(|e| match e {
                    ResponsesError::Invalid(m) => ResponsesError::Invalid(format!("input[{i}]: {m}")),
                    other => other,
                })?);
            }
        }
        _ => return Err(ResponsesError::Invalid("`input` must be a string or an array of items".into())),
    }
    let streamed = stream == Some(true);
    let chat = ChatRequest {
        messages,
        stream,
        // Usage goes in `response.completed`, so ask for it whenever streaming.
        stream_options: streamed.then(|| StreamOptions { include_usage: Some(true), extra: Map::new() }),
        n: None,
        temperature: extra.remove("temperature").and_then(|t| t.as_f64()),
        extra,
    };
    Ok((chat, Echo { fields: echo }))
}

fn input_item(item: &Value) -> Result<ChatMessage, ResponsesError> {
    let kind = item.get("type").and_then(Value::as_str).unwrap_or("message");
    match kind {
        "message" => {
            let role = item.get("role").and_then(Value::as_str).ok_or_else(|| invalid("a message needs a `role`"))?;
            // Chat servers that know no `developer` role read it as `system`, which it replaced.
            let role = match role {
                "developer" => "system",
                "user" | "assistant" | "system" => role,
                other => return Err(invalid(&format!("unknown role `{other}`"))),
            };
            let content = match item.get("content") {
                Some(Value::String(s)) => Value::String(s.clone()),
                Some(Value::Array(parts)) => Value::Array(parts.iter().map(content_part).collect::<Result<_, _>>()?),
                _ => return Err(invalid("a message needs `content`, a string or an array of parts")),
            };
            Ok(ChatMessage { role: role.to_string(), content, extra: Map::new() })
        }
        "function_call" => {
            let call_id = str_field(item, "call_id")?;
            let name = str_field(item, "name")?;
            let arguments = item.get("arguments").and_then(Value::as_str).unwrap_or("{}");
            let mut extra = Map::new();
            extra.insert(
                "tool_calls".into(),
                json!([{"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]),
            );
            Ok(ChatMessage { role: "assistant".into(), content: Value::Null, extra })
        }
        "function_call_output" => {
            let call_id = str_field(item, "call_id")?;
            let output = match item.get("output") {
                Some(Value::String(s)) => s.clone(),
                Some(other) => super::content_text(other),
                None => String::new(),
            };
            let mut message = ChatMessage::new("tool", output);
            message.extra.insert("tool_call_id".into(), Value::String(call_id.to_string()));
            Ok(message)
        }
        other => Err(ResponsesError::Unsupported {
            param: format!("input item of type `{other}`"),
            why: "only messages, function calls and function call outputs can be judged",
        }),
    }
}

fn content_part(part: &Value) -> Result<Value, ResponsesError> {
    match part.get("type").and_then(Value::as_str) {
        Some("input_text" | "output_text" | "text") => Ok(json!({"type": "text", "text": str_field(part, "text")?})),
        Some("input_image") => {
            let url = part.get("image_url").cloned().unwrap_or(Value::Null);
            let mut image = json!({"url": url});
            if let Some(detail) = part.get("detail") {
                image["detail"] = detail.clone();
            }
            Ok(json!({"type": "image_url", "image_url": image}))
        }
        Some(other) => Err(ResponsesError::Unsupported {
            param: format!("content part of type `{other}`"),
            why: "only text and image parts are supported",
        }),
        None => Err(invalid("a content part needs a `type`")),
    }
}

fn tools(value: &Value) -> Result<Vec<Value>, ResponsesError> {
    let list = value.as_array().ok_or_else(|| invalid("`tools` must be an array"))?;
    list.iter()
        .map(|tool| match tool.get("type").and_then(Value::as_str) {
            Some("function") => {
                let mut function = Map::new();
                for key in ["name", "description", "parameters", "strict"] {
                    if let Some(v) = tool.get(key) {
                        function.insert(key.into(), v.clone());
                    }
                }
                Ok(json!({"type": "function", "function": function}))
            }
            other => Err(ResponsesError::Unsupported {
                param: format!("tool of type `{}`", other.unwrap_or("?")),
                why: "built-in tools run inside the model provider, where rulegate cannot judge their output",
            }),
        })
        .collect()
}

fn tool_choice(value: &Value) -> Result<Value, ResponsesError> {
    match value {
        Value::String(_) => Ok(value.clone()),
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            Ok(json!({"type": "function", "function": {"name": o.get("name").cloned().unwrap_or(Value::Null)}}))
        }
        _ => Err(ResponsesError::Unsupported {
            param: "tool_choice".into(),
            why: "only `auto`, `none`, `required` and a function are supported",
        }),
    }
}

fn response_format(format: &Value) -> Result<Option<Value>, ResponsesError> {
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let mut schema = Map::new();
            for key in ["name", "description", "schema", "strict"] {
                if let Some(v) = format.get(key) {
                    schema.insert(key.into(), v.clone());
                }
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": schema})))
        }
        _ => Err(invalid("`text.format.type` must be `text`, `json_object` or `json_schema`")),
    }
}

fn str_field<'a>(value: &'a Value, key: &str) -> Result<&'a str, ResponsesError> {
    value.get(key).and_then(Value::as_str).ok_or_else(|| invalid(&format!("`{key}` must be a string")))
}

fn invalid(message: &str) -> ResponsesError {
    ResponsesError::Invalid(message.to_string())
}

fn fresh_id(prefix: &str) -> String {
    format!("{prefix}_rulegate{:016x}", fastrand::u64(..))
}

/// The `response` object for a judged chat completion (its first choice).
pub fn from_chat(chat: &ChatResponse, echo: &Echo) -> Value {
    let mut output = Vec::new();
    let finish = chat.choices.first().and_then(|c| c.finish_reason.clone());
    if let Some(choice) = chat.choices.first() {
        let text = choice.message.text();
        let calls = choice.message.extra.get("tool_calls").and_then(Value::as_array).cloned().unwrap_or_default();
        if !text.is_empty() || calls.is_empty() {
            output.push(message_item(&fresh_id("msg"), &text, "completed"));
        }
        for call in &calls {
            let function = call.get("function").cloned().unwrap_or(Value::Null);
            output.push(function_item(
                &fresh_id("fc"),
                call.get("id").and_then(Value::as_str).unwrap_or(""),
                function.get("name").and_then(Value::as_str).unwrap_or(""),
                function.get("arguments").and_then(Value::as_str).unwrap_or(""),
                "completed",
            ));
        }
    }
    let model = if chat.model.is_empty() { echo.model() } else { chat.model.clone() };
    response_object(&fresh_id("resp"), chat.created, &model, output, finish.as_deref(), chat.usage.clone(), echo, true)
}

impl Echo {
    fn model(&self) -> String {
        self.fields.get("model").and_then(Value::as_str).unwrap_or("").to_string()
    }
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    let content = if status == "in_progress" {
        json!([])
    } else {
        json!([{"type": "output_text", "text": text, "annotations": [], "logprobs": []}])
    };
    json!({"id": id, "type": "message", "status": status, "role": "assistant", "content": content})
}

fn function_item(id: &str, call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({"id": id, "type": "function_call", "status": status, "call_id": call_id, "name": name, "arguments": arguments})
}

#[allow(clippy::too_many_arguments)]
fn response_object(
    id: &str,
    created: i64,
    model: &str,
    output: Vec<Value>,
    finish_reason: Option<&str>,
    usage: Option<Usage>,
    echo: &Echo,
    done: bool,
) -> Value {
    let (status, incomplete) = match (done, finish_reason) {
        (false, _) => ("in_progress", Value::Null),
        (true, Some("length")) => ("incomplete", json!({"reason": "max_output_tokens"})),
        (true, Some("content_filter")) => ("incomplete", json!({"reason": "content_filter"})),
        (true, _) => ("completed", Value::Null),
    };
    let created = if created > 0 { created } else { super::now_unix() };
    let mut object = json!({
        "id": id,
        "object": "response",
        "created_at": created,
        "status": status,
        "error": null,
        "incomplete_details": incomplete,
        "model": model,
        "output": output,
        "parallel_tool_calls": true,
        "tool_choice": "auto",
        "tools": [],
        "store": false,
        "metadata": {},
    });
    for (key, value) in &echo.fields {
        // `store` is echoed as false: rulegate stores nothing.
        if key != "store" {
            object[key] = value.clone();
        }
    }
    object["model"] = Value::String(model.to_string());
    object["usage"] = match usage {
        Some(u) => json!({
            "input_tokens": u.prompt_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": u.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": u.total_tokens,
        }),
        None => Value::Null,
    };
    object
}

/// Turns the frames of a judged chat stream into Responses events, one frame at a time.
/// Comments (rulegate's verdict) pass through; `[DONE]` closes the open items and sends
/// `response.completed`; an error event becomes an `error` event and ends the stream.
pub struct StreamTranslator {
    echo: Echo,
    id: String,
    message_id: String,
    model: String,
    created: i64,
    sequence: u64,
    started: bool,
    message_open: bool,
    text: String,
    calls: Vec<(String, String, String)>,
    finish_reason: Option<String>,
    usage: Option<Usage>,
    finished: bool,
    decoder: sse::Decoder,
}

impl StreamTranslator {
    /// A translator for one stream.
    pub fn new(echo: Echo) -> Self {
        StreamTranslator {
            model: echo.model(),
            echo,
            id: fresh_id("resp"),
            message_id: fresh_id("msg"),
            created: super::now_unix(),
            sequence: 0,
            started: false,
            message_open: false,
            text: String::new(),
            calls: Vec::new(),
            finish_reason: None,
            usage: None,
            finished: false,
            decoder: sse::Decoder::default(),
        }
    }

    /// The Responses frames for one frame of the chat stream.
    pub fn frame(&mut self, frame: &[u8]) -> Vec<Bytes> {
        if frame.starts_with(b":") {
            return vec![Bytes::copy_from_slice(frame)];
        }
        let mut out = Vec::new();
        let payloads = self.decoder.push(frame).unwrap_or_else(|e| {
            vec![
                serde_json::to_vec(&super::ErrorBody::new(super::ErrorKind::Server, "stream_error", e))
                    .unwrap_or_default(),
            ]
        });
        for payload in payloads {
            if self.finished {
                break;
            }
            self.payload(&payload, &mut out);
        }
        out
    }

    fn payload(&mut self, payload: &[u8], out: &mut Vec<Bytes>) {
        if payload == b"[DONE]" {
            self.start(out);
            self.complete(out);
            return;
        }
        let value: Value = match serde_json::from_slice(payload) {
            Ok(v) => v,
            Err(e) => return self.fail("stream_error", &format!("unreadable chunk: {e}"), out),
        };
        if let Some(error) = value.get("error") {
            let code = error.get("code").and_then(Value::as_str).unwrap_or("server_error").to_string();
            let message = error.get("message").and_then(Value::as_str).unwrap_or("the stream failed").to_string();
            return self.fail(&code, &message, out);
        }
        let Ok(chunk) = serde_json::from_value::<super::ChatChunk>(value) else {
            return self.fail("stream_error", "a chunk is not a chat completion chunk", out);
        };
        if !chunk.model.is_empty() {
            self.model = chunk.model.clone();
        }
        if chunk.created > 0 {
            self.created = chunk.created;
        }
        self.start(out);
        if let Some(usage) = chunk.usage {
            self.usage = Some(usage);
        }
        for choice in chunk.choices.iter().filter(|c| c.index == 0) {
            if let Some(text) = choice.delta.content.as_deref().filter(|t| !t.is_empty()) {
                self.open_message(out);
                self.text.push_str(text);
                let event = json!({"type": "response.output_text.delta", "item_id": self.message_id,
                    "output_index": 0, "content_index": 0, "delta": text, "logprobs": []});
                self.emit(event, out);
            }
            if let Some(Value::Array(calls)) = choice.delta.extra.get("tool_calls") {
                for call in calls {
                    self.merge_call(call);
                }
            }
            if let Some(reason) = &choice.finish_reason {
                self.finish_reason = Some(reason.clone());
            }
        }
    }

    fn merge_call(&mut self, call: &Value) {
        let index = call.get("index").and_then(Value::as_u64).unwrap_or(self.calls.len() as u64) as usize;
        // Bounded by the chunk's own index values; a gap fills with empty calls.
        if index > self.calls.len() + 64 {
            return;
        }
        while self.calls.len() <= index {
            self.calls.push(Default::default());
        }
        let slot = &mut self.calls[index];
        if let Some(id) = call.get("id").and_then(Value::as_str) {
            slot.0 = id.to_string();
        }
        if let Some(function) = call.get("function") {
            if let Some(name) = function.get("name").and_then(Value::as_str) {
                slot.1.push_str(name);
            }
            if let Some(arguments) = function.get("arguments").and_then(Value::as_str) {
                slot.2.push_str(arguments);
            }
        }
    }

    fn emit(&mut self, mut event: Value, out: &mut Vec<Bytes>) {
        event["sequence_number"] = Value::from(self.sequence);
        self.sequence += 1;
        let kind = event.get("type").and_then(Value::as_str).unwrap_or("message").to_string();
        let mut frame = format!("event: {kind}\n").into_bytes();
        frame.extend_from_slice(&sse::json_event(&event));
        out.push(Bytes::from(frame));
    }

    fn snapshot(&self, output: Vec<Value>, done: bool) -> Value {
        response_object(
            &self.id,
            self.created,
            &self.model,
            output,
            self.finish_reason.as_deref(),
            if done { self.usage.clone() } else { None },
            &self.echo,
            done,
        )
    }

    fn start(&mut self, out: &mut Vec<Bytes>) {
        if self.started {
            return;
        }
        self.started = true;
        let response = self.snapshot(Vec::new(), false);
        self.emit(json!({"type": "response.created", "response": response}), out);
        self.emit(json!({"type": "response.in_progress", "response": response}), out);
    }

    fn open_message(&mut self, out: &mut Vec<Bytes>) {
        if self.message_open {
            return;
        }
        self.message_open = true;
        let item = message_item(&self.message_id, "", "in_progress");
        self.emit(json!({"type": "response.output_item.added", "output_index": 0, "item": item}), out);
        let part = json!({"type": "output_text", "text": "", "annotations": [], "logprobs": []});
        self.emit(
            json!({"type": "response.content_part.added", "item_id": self.message_id, "output_index": 0,
                "content_index": 0, "part": part}),
            out,
        );
    }

    fn complete(&mut self, out: &mut Vec<Bytes>) {
        self.finished = true;
        let mut output = Vec::new();
        if self.message_open || self.calls.is_empty() {
            self.open_message(out);
            let text = std::mem::take(&mut self.text);
            let part = json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
            self.emit(
                json!({"type": "response.output_text.done", "item_id": self.message_id, "output_index": 0,
                    "content_index": 0, "text": text, "logprobs": []}),
                out,
            );
            self.emit(
                json!({"type": "response.content_part.done", "item_id": self.message_id, "output_index": 0,
                    "content_index": 0, "part": part}),
                out,
            );
            let item = message_item(&self.message_id, &text, "completed");
            self.emit(json!({"type": "response.output_item.done", "output_index": 0, "item": item}), out);
            output.push(item);
        }
        for (call_id, name, arguments) in std::mem::take(&mut self.calls) {
            let index = output.len();
            let id = fresh_id("fc");
            let added = function_item(&id, &call_id, &name, "", "in_progress");
            self.emit(json!({"type": "response.output_item.added", "output_index": index, "item": added}), out);
            self.emit(
                json!({"type": "response.function_call_arguments.delta", "item_id": id, "output_index": index,
                    "delta": arguments}),
                out,
            );
            self.emit(
                json!({"type": "response.function_call_arguments.done", "item_id": id, "output_index": index,
                    "arguments": arguments}),
                out,
            );
            let item = function_item(&id, &call_id, &name, &arguments, "completed");
            self.emit(json!({"type": "response.output_item.done", "output_index": index, "item": item.clone()}), out);
            output.push(item);
        }
        let response = self.snapshot(output, true);
        let kind = if response["status"] == "incomplete" { "response.incomplete" } else { "response.completed" };
        self.emit(json!({"type": kind, "response": response}), out);
    }

    fn fail(&mut self, code: &str, message: &str, out: &mut Vec<Bytes>) {
        self.finished = true;
        self.emit(json!({"type": "error", "code": code, "message": message, "param": null}), out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: Value) -> Result<(ChatRequest, Echo), ResponsesError> {
        to_chat(&serde_json::to_vec(&body).unwrap())
    }

    #[test]
    fn string_input_and_instructions() {
        let (req, echo) =
            chat(json!({"model": "m", "instructions": "be brief", "input": "hi", "max_output_tokens": 9, "temperature": 0.5, "store": true}))
                .unwrap();
        assert_eq!(req.messages.len(), 2);
        assert_eq!((req.messages[0].role.as_str(), req.messages[0].text().as_str()), ("system", "be brief"));
        assert_eq!((req.messages[1].role.as_str(), req.messages[1].text().as_str()), ("user", "hi"));
        assert_eq!(req.extra.get("max_tokens"), Some(&json!(9)));
        assert_eq!(req.temperature, Some(0.5));
        assert!(!req.extra.contains_key("store") && !req.is_stream());
        assert_eq!(echo.model(), "m");
    }

    #[test]
    fn items_tools_and_formats() {
        let (req, _) = chat(json!({
            "model": "m", "stream": true,
            "input": [
                {"role": "developer", "content": "rules"},
                {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_image", "image_url": "data:x"}]},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{\"x\":1}"},
                {"type": "function_call_output", "call_id": "c1", "output": "42"}
            ],
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "f"},
            "text": {"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"}}}
        }))
        .unwrap();
        assert_eq!(
            req.messages.iter().map(|m| m.role.as_str()).collect::<Vec<_>>(),
            ["system", "user", "assistant", "tool"]
        );
        assert_eq!(req.messages[1].text(), "a");
        assert_eq!(req.messages[2].judged_text(), "f({\"x\":1})");
        assert_eq!(req.messages[3].extra["tool_call_id"], "c1");
        assert_eq!(req.extra["tools"][0]["function"]["name"], "f");
        assert_eq!(req.extra["tool_choice"]["function"]["name"], "f");
        assert_eq!(req.extra["response_format"]["json_schema"]["name"], "s");
        assert!(req.is_stream() && req.include_usage());
    }

    #[test]
    fn stateful_and_unknown_parameters_are_refused() {
        for body in [
            json!({"input": "x", "previous_response_id": "resp_1"}),
            json!({"input": "x", "conversation": "conv_1"}),
            json!({"input": "x", "background": true}),
            json!({"input": "x", "tools": [{"type": "web_search"}]}),
            json!({"input": "x", "frobnicate": 1}),
            json!({"input": [{"type": "reasoning", "summary": []}]}),
        ] {
            let e = chat(body.clone()).unwrap_err();
            assert_eq!(e.code(), "unsupported_parameter", "{body}: {e}");
        }
        assert_eq!(chat(json!({"model": "m"})).unwrap_err().code(), "invalid_request");
        assert_eq!(chat(json!({"input": [{"role": "wizard", "content": "x"}]})).unwrap_err().code(), "invalid_request");
        assert_eq!(to_chat(b"{").unwrap_err().code(), "invalid_json");
        assert!(chat(json!({"input": "x", "previous_response_id": null, "background": false})).is_ok());
    }

    #[test]
    fn completion_becomes_a_response() {
        let chat: ChatResponse = serde_json::from_value(json!({
            "id": "c", "created": 5, "model": "up",
            "choices": [{"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": "Paris",
                "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        }))
        .unwrap();
        let (_, echo) = to_chat(br#"{"model":"m","input":"x","metadata":{"a":"b"},"store":true}"#).unwrap();
        let r = from_chat(&chat, &echo);
        assert_eq!(r["object"], "response");
        assert_eq!(r["status"], "incomplete");
        assert_eq!(r["incomplete_details"]["reason"], "max_output_tokens");
        assert_eq!(r["output"][0]["content"][0]["text"], "Paris");
        assert_eq!(r["output"][1]["type"], "function_call");
        assert_eq!(r["output"][1]["call_id"], "t1");
        assert_eq!(r["usage"]["output_tokens"], 2);
        assert_eq!(r["metadata"]["a"], "b");
        assert_eq!(r["store"], false);
        assert_eq!(r["model"], "up");
    }

    fn parse_events(frames: &[Bytes]) -> Vec<Value> {
        frames
            .iter()
            .filter(|f| !f.starts_with(b":"))
            .map(|f| {
                let text = std::str::from_utf8(f).unwrap();
                let (event, data) = text.split_once('\n').unwrap();
                let value: Value = serde_json::from_str(data.trim().strip_prefix("data: ").unwrap()).unwrap();
                assert_eq!(event.strip_prefix("event: ").unwrap(), value["type"]);
                value
            })
            .collect()
    }

    #[test]
    fn stream_translation() {
        let mut t = StreamTranslator::new(to_chat(br#"{"model":"m","input":"x","stream":true}"#).unwrap().1);
        let mut frames = Vec::new();
        for chunk in [
            json!({"id": "c", "model": "up", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
            json!({"id": "c", "choices": [{"index": 0, "delta": {"content": "Hel"}}]}),
            json!({"id": "c", "choices": [{"index": 0, "delta": {"content": "lo"}}]}),
            json!({"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
            json!({"id": "c", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}),
        ] {
            frames.extend(t.frame(&sse::json_event(&chunk)));
        }
        frames.extend(t.frame(b": rulegate action=pass\n\n"));
        frames.extend(t.frame(sse::DONE));
        assert!(frames.iter().any(|f| f.starts_with(b": rulegate")));
        let events = parse_events(&frames);
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.completed"
            ]
        );
        let seq: Vec<u64> = events.iter().map(|e| e["sequence_number"].as_u64().unwrap()).collect();
        assert_eq!(seq, (0..10).collect::<Vec<_>>());
        let done = &events[9]["response"];
        assert_eq!(done["output"][0]["content"][0]["text"], "Hello");
        assert_eq!(done["usage"]["total_tokens"], 3);
        assert_eq!(done["model"], "up");
        assert!(t.frame(sse::DONE).is_empty(), "nothing after completion");
    }

    #[test]
    fn stream_error_and_tool_calls() {
        let mut t = StreamTranslator::new(Echo::default());
        let mut frames = t.frame(&sse::json_event(&json!({"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "id": "t", "function": {"name": "f", "arguments": "{\"a\""}}]}}]})));
        frames.extend(t.frame(&sse::json_event(&json!({"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": ":1}"}}]}}]}))));
        frames.extend(t.frame(sse::DONE));
        let events = parse_events(&frames);
        let done = &events.last().unwrap()["response"];
        assert_eq!(done["output"][0]["type"], "function_call");
        assert_eq!(done["output"][0]["arguments"], "{\"a\":1}");

        let mut t = StreamTranslator::new(Echo::default());
        let frames = t.frame(&sse::json_event(
            &json!({"error": {"message": "blocked", "type": "x", "code": "upstream_timeout"}}),
        ));
        let events = parse_events(&frames);
        assert_eq!(events.last().unwrap()["type"], "error");
        assert_eq!(events.last().unwrap()["code"], "upstream_timeout");
        assert!(t.frame(sse::DONE).is_empty());
    }
}
