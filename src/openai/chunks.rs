//! Streamed chat completions on the wire: reassembling chunks into a completion (tool calls
//! and unknown message fields included), and building the chunks and events of a stream
//! rulegate writes itself. Knows the OpenAI types only; what is streamed when is the
//! pipeline's business.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::{Map, Value};

use super::{ChatChunk, ChatMessage, ChatResponse, Choice, ChunkChoice, Delta, Usage, completion_id, now_unix, sse};

/// One choice of a stream being reassembled.
#[derive(Debug, Clone)]
pub struct Assembled {
    role: String,
    /// The content so far.
    pub text: String,
    /// The finish reason, once a chunk gave one.
    pub finish_reason: Option<String>,
    /// Tool calls by their `index`, arguments concatenated.
    tool_calls: BTreeMap<u64, Value>,
    /// Other message fields the deltas carried (`refusal`, `reasoning_content`, ...):
    /// strings are concatenated, anything else keeps its last value.
    extra: Map<String, Value>,
}

impl Default for Assembled {
    fn default() -> Self {
        Assembled::new()
    }
}

impl Assembled {
    /// Nothing assembled yet.
    pub fn new() -> Self {
        Assembled {
            role: "assistant".into(),
            text: String::new(),
            finish_reason: None,
            tool_calls: BTreeMap::new(),
            extra: Map::new(),
        }
    }

    /// The message assembled so far, with `text` as its content.
    pub fn message(&self, text: String) -> ChatMessage {
        let mut message = ChatMessage::new(&self.role, text);
        message.extra = self.extra.clone();
        if !self.tool_calls.is_empty() {
            message.extra.insert("tool_calls".into(), Value::Array(self.tool_calls.values().cloned().collect()));
        }
        message
    }

    /// Folds one delta in.
    pub fn add(&mut self, delta: &Delta) {
        if let Some(role) = &delta.role {
            self.role = role.clone();
        }
        if let Some(text) = &delta.content {
            self.text.push_str(text);
        }
        for (key, value) in &delta.extra {
            match (key.as_str(), value) {
                ("tool_calls", Value::Array(calls)) => {
                    for (position, call) in calls.iter().enumerate() {
                        let index = call.get("index").and_then(Value::as_u64).unwrap_or(position as u64);
                        merge_tool_call(self.tool_calls.entry(index).or_insert_with(|| serde_json::json!({})), call);
                    }
                }
                (_, Value::Null) => {}
                (_, Value::String(piece)) => match self.extra.get_mut(key) {
                    Some(Value::String(so_far)) => so_far.push_str(piece),
                    _ => {
                        self.extra.insert(key.clone(), value.clone());
                    }
                },
                _ => {
                    self.extra.insert(key.clone(), value.clone());
                }
            }
        }
    }

    /// Whether anything but the content was assembled (tool calls, other fields).
    pub fn has_more_than_text(&self) -> bool {
        !self.tool_calls.is_empty() || !self.extra.is_empty()
    }

    /// Everything but the content (tool calls, each whole, and the other fields), as one
    /// delta of choice `index`, as [`replay_events`] sends them.
    pub fn into_held_delta(self, index: u32) -> ChunkChoice {
        let mut held = delta(index, None, None, None);
        held.delta.extra = self.extra;
        if !self.tool_calls.is_empty() {
            let calls: Vec<Value> = self
                .tool_calls
                .into_iter()
                .map(|(index, mut call)| {
                    if let Some(o) = call.as_object_mut() {
                        o.insert("index".into(), Value::from(index));
                    }
                    call
                })
                .collect();
            held.delta.extra.insert("tool_calls".into(), Value::Array(calls));
        }
        held
    }

    /// The assembled choice at `index`.
    pub fn into_choice(self, index: u32) -> Choice {
        let mut message = ChatMessage::new(&self.role, self.text);
        message.extra = self.extra;
        if !self.tool_calls.is_empty() {
            message.extra.insert("tool_calls".into(), Value::Array(self.tool_calls.into_values().collect()));
        }
        Choice { index, message, finish_reason: self.finish_reason, extra: Map::new() }
    }
}

/// Folds one streamed tool-call delta into the call assembled so far: `id`, `type` and the
/// payload's `name` are taken when given; a function's `arguments` and a custom tool's
/// `input` arrive in pieces and are appended.
fn merge_tool_call(call: &mut Value, delta: &Value) {
    let (Some(call), Some(delta)) = (call.as_object_mut(), delta.as_object()) else { return };
    for (key, value) in delta {
        match key.as_str() {
            "index" => {}
            "function" | "custom" => {
                let payload = call.entry(key.clone()).or_insert_with(|| serde_json::json!({}));
                let (Some(function), Some(parts)) = (payload.as_object_mut(), value.as_object()) else { continue };
                for (k, v) in parts {
                    match (k.as_str(), v, function.get_mut(k)) {
                        ("arguments" | "input", Value::String(piece), Some(Value::String(so_far))) => {
                            so_far.push_str(piece)
                        }
                        (_, Value::Null, _) => {}
                        _ => {
                            function.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
            _ if !value.is_null() => {
                call.insert(key.clone(), value.clone());
            }
            _ => {}
        }
    }
}

/// Reassembles a streamed completion chunk by chunk.
#[derive(Debug, Default)]
pub struct Assembler {
    head: Option<ChatChunk>,
    choices: BTreeMap<u32, Assembled>,
    usage: Option<Usage>,
}

impl Assembler {
    /// Folds one chunk in.
    pub fn push(&mut self, chunk: ChatChunk) {
        self.usage = chunk.usage.clone().or(self.usage.take());
        for c in &chunk.choices {
            let entry = self.choices.entry(c.index).or_default();
            entry.add(&c.delta);
            if c.finish_reason.is_some() {
                entry.finish_reason = c.finish_reason.clone();
            }
        }
        self.head.get_or_insert(chunk);
    }

    /// The completion; `None` when no chunk came.
    pub fn finish(self) -> Option<ChatResponse> {
        let head = self.head?;
        Some(ChatResponse {
            id: head.id,
            object: "chat.completion".into(),
            created: head.created,
            model: head.model,
            choices: self.choices.into_iter().map(|(index, a)| a.into_choice(index)).collect(),
            usage: self.usage,
            extra: Map::new(),
        })
    }
}

/// A chunk of the stream `head` names (its id, time and model).
pub fn chunk(head: &ChatResponse, choices: Vec<ChunkChoice>, usage: Option<Usage>) -> ChatChunk {
    ChatChunk {
        id: head.id.clone(),
        object: "chat.completion.chunk".into(),
        created: head.created,
        model: head.model.clone(),
        choices,
        usage,
        extra: Map::new(),
    }
}

/// One choice's delta.
pub fn delta(index: u32, role: Option<&str>, content: Option<&str>, finish_reason: Option<&str>) -> ChunkChoice {
    ChunkChoice {
        index,
        delta: Delta { role: role.map(str::to_string), content: content.map(str::to_string), extra: Map::new() },
        finish_reason: finish_reason.map(str::to_string),
        extra: Map::new(),
    }
}

/// The SSE event of one chunk of the stream `head` names.
pub fn chunk_event(head: &ChatResponse, choices: Vec<ChunkChoice>) -> Bytes {
    sse::json_event(&chunk(head, choices, None))
}

/// The final chunk `stream_options.include_usage` asks for. When the upstream reported no
/// usage (some servers do not stream it), `usage` is `null` rather than invented zeros.
pub fn usage_event(head: &ChatResponse, usage: Option<Usage>) -> Bytes {
    let missing = usage.is_none();
    let mut last = serde_json::to_value(chunk(head, Vec::new(), usage)).unwrap_or_default();
    if missing {
        last["usage"] = Value::Null;
    }
    sse::json_event(&last)
}

/// Cuts text into pieces of about `size` characters at whitespace; they concatenate back
/// to the text exactly.
pub fn pieces(text: &str, size: usize) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut count = 0;
    for (i, c) in text.char_indices() {
        count += 1;
        if count >= size && c.is_whitespace() {
            let end = i + c.len_utf8();
            out.push(&text[start..end]);
            start = end;
            count = 0;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

/// The id, time and model for chunks of a stream rulegate starts itself (no upstream chunk
/// to take them from).
pub fn new_head(model: String) -> ChatResponse {
    ChatResponse {
        id: completion_id(),
        object: String::new(),
        created: now_unix(),
        model,
        choices: Vec::new(),
        usage: None,
        extra: Map::new(),
    }
}

/// The id, time and model of an upstream chunk, for the chunks rulegate sends in its place.
pub fn head_of(chunk: &ChatChunk) -> ChatResponse {
    ChatResponse {
        id: chunk.id.clone(),
        object: String::new(),
        created: chunk.created,
        model: chunk.model.clone(),
        choices: Vec::new(),
        usage: None,
        extra: Map::new(),
    }
}

/// A complete response as the chunks of a stream (for an upstream that ignored `stream`).
pub fn as_chunks(response: ChatResponse) -> Vec<ChatChunk> {
    let mut out: Vec<ChatChunk> = response
        .choices
        .iter()
        .map(|c| {
            chunk(
                &response,
                vec![delta(c.index, Some(&c.message.role), Some(&c.message.text()), c.finish_reason.as_deref())],
                None,
            )
        })
        .collect();
    if let Some(usage) = response.usage.clone() {
        out.push(chunk(&response, Vec::new(), Some(usage)));
    }
    out
}

/// A decided completion as stream events: per choice its role (with any other message
/// fields but the tool calls), its text in pieces, its tool calls (each whole, in one delta)
/// and its finish reason; then the usage when asked for. The caller ends the stream.
pub fn replay_events(response: &ChatResponse, include_usage: bool) -> Vec<Bytes> {
    let mut events = Vec::new();
    for choice in &response.choices {
        // The first delta carries the role and any other message fields but the tool calls.
        let mut first = delta(choice.index, Some("assistant"), Some(""), None);
        first.delta.extra = choice
            .message
            .extra
            .iter()
            .filter(|(k, _)| *k != "tool_calls")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        events.push(chunk_event(response, vec![first]));
        let text = choice.message.text();
        for piece in pieces(&text, 48) {
            events.push(chunk_event(response, vec![delta(choice.index, None, Some(piece), None)]));
        }
        if let Some(Value::Array(calls)) = choice.message.extra.get("tool_calls") {
            // Each call whole, in one delta, with the `index` streamed tool calls carry.
            let calls: Vec<Value> = calls
                .iter()
                .enumerate()
                .map(|(i, call)| {
                    let mut call = call.clone();
                    if let Some(o) = call.as_object_mut() {
                        o.insert("index".into(), Value::from(i));
                    }
                    call
                })
                .collect();
            let mut tools = delta(choice.index, None, None, None);
            tools.delta.extra.insert("tool_calls".into(), Value::Array(calls));
            events.push(chunk_event(response, vec![tools]));
        }
        let finish = choice.finish_reason.as_deref().unwrap_or("stop");
        events.push(chunk_event(response, vec![delta(choice.index, None, None, Some(finish))]));
    }
    if include_usage {
        events.push(usage_event(response, response.usage.clone()));
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_concatenate_back() {
        let text = "The quick brown fox jumps over the lazy dog, again and again and again, until nightfall.";
        let p = pieces(text, 16);
        assert!(p.len() > 3);
        assert_eq!(p.concat(), text);
        assert!(pieces("", 16).is_empty());
        assert_eq!(pieces("héllo wörld ünïcode", 3).concat(), "héllo wörld ünïcode");
    }

    #[test]
    fn stream_pieces_keep_json_valid() {
        let head = ChatResponse {
            id: "x".into(),
            object: String::new(),
            created: 1,
            model: "m".into(),
            choices: Vec::new(),
            usage: None,
            extra: Map::new(),
        };
        let event = sse::json_event(&chunk(&head, vec![delta(0, None, Some("a\"b"), None)], None));
        let body = std::str::from_utf8(&event).unwrap();
        let json: Value = serde_json::from_str(body.strip_prefix("data: ").unwrap().trim_end()).unwrap();
        assert_eq!(json["choices"][0]["delta"]["content"], "a\"b");
        assert_eq!(json["object"], "chat.completion.chunk");
    }
}
