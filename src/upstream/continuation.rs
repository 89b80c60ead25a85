//! Continuing a partial assistant answer, for step-level search. How an upstream is asked to
//! go on from a prefix is server-specific, so it is a setting ([`Continuation`]):
//!
//! - `assistant_prefix`: a chat request whose last message is the assistant's prefix, with
//!   vLLM's `continue_final_message: true` and `add_generation_prompt: false`. llama.cpp's
//!   server (`llama-server`) continues a trailing assistant message the same way.
//! - `chatml_completions`: the conversation rendered with the ChatML template
//!   (`<|im_start|>role ... <|im_end|>`, as SmolLM2, Qwen and many others use) and the prefix
//!   after the assistant header, sent as a raw prompt to the upstream's `/v1/completions`.
//!   Works with any server that has that route (llama-cpp-python, llama.cpp, vLLM, TGI).
//! - `none` (the default): the upstream cannot continue; beam search runs as best-of-n.
//!
//! Legacy completions requests (`/v1/completions` from the client) always continue: the
//! prefix is appended to the client's own raw prompt.
//!
//! In every case the upstream's answer holds the continuation only, not the prefix.

use http::Uri;
use serde_json::{Map, Value};

use super::Wire;
use crate::openai::{ChatMessage, ChatRequest};

/// How the upstream is asked to continue an assistant prefix (`upstream.continuation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Continuation {
    /// The upstream cannot continue a prefix.
    #[default]
    None,
    /// A trailing assistant message with `continue_final_message` (vLLM, llama.cpp's server).
    AssistantPrefix,
    /// A raw ChatML prompt on `/v1/completions`.
    ChatmlCompletions,
}

/// One call that continues `prefix`: the request, the API it speaks and where it goes.
#[derive(Debug, Clone)]
pub struct ContinueCall {
    /// The request (for [`Wire::Completions`], its single user message is the raw prompt).
    pub chat: ChatRequest,
    /// How it is written on the wire.
    pub wire: Wire,
    /// The request target.
    pub uri: Uri,
}

/// Sampling fields a completions route understands; chat-only fields (`tools`,
/// `response_format`, `logprobs` as a flag, ...) are not sent there.
const COMPLETIONS_FIELDS: &[&str] =
    &["model", "top_p", "seed", "frequency_penalty", "presence_penalty", "user", "logit_bias", "top_k", "min_p"];

impl Continuation {
    /// Whether `request`, sent as `wire`, can be continued from a prefix. Tool calling cannot:
    /// a half-written tool call has no text form every server accepts.
    pub fn can_continue(self, request: &ChatRequest, wire: Wire) -> bool {
        let tools = ["tools", "functions", "tool_choice"].iter().any(|k| request.extra.contains_key(*k))
            || request.messages.iter().any(ChatMessage::has_tool_calls);
        match wire {
            Wire::Completions => true,
            Wire::Chat => self != Continuation::None && !tools,
        }
    }

    /// The call that asks for a continuation of `prefix` (empty: a fresh answer) of at most
    /// `max_tokens` tokens (`None`: the request's own limit), `n` at a time. `None` when this
    /// request cannot be continued ([`Continuation::can_continue`]).
    pub fn call(
        self,
        request: &ChatRequest,
        wire: Wire,
        uri: &Uri,
        prefix: &str,
        max_tokens: Option<u32>,
        n: u32,
    ) -> Option<ContinueCall> {
        if !self.can_continue(request, wire) {
            return None;
        }
        let mut chat = request.clone();
        chat.n = (n > 1).then_some(n);
        chat.stream = None;
        chat.stream_options = None;
        if let Some(limit) = max_tokens {
            chat.extra.remove("max_completion_tokens");
            chat.extra.insert("max_tokens".into(), Value::from(limit));
        }
        match (wire, self) {
            (Wire::Completions, _) => {
                // The client's raw prompt, then what the assistant wrote so far.
                if let Some(last) = chat.messages.last_mut() {
                    last.content = Value::String(format!("{}{prefix}", last.text()));
                }
                Some(ContinueCall { chat, wire, uri: uri.clone() })
            }
            (Wire::Chat, Continuation::AssistantPrefix) => {
                if !prefix.is_empty() {
                    chat.messages.push(ChatMessage::new("assistant", prefix));
                    chat.extra.insert("continue_final_message".into(), Value::Bool(true));
                    chat.extra.insert("add_generation_prompt".into(), Value::Bool(false));
                }
                Some(ContinueCall { chat, wire, uri: uri.clone() })
            }
            (Wire::Chat, Continuation::ChatmlCompletions) => {
                let mut extra: Map<String, Value> = chat
                    .extra
                    .iter()
                    .filter(|(k, _)| COMPLETIONS_FIELDS.contains(&k.as_str()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                if let Some(limit) = chat.extra.get("max_tokens").or_else(|| chat.extra.get("max_completion_tokens")) {
                    extra.insert("max_tokens".into(), limit.clone());
                }
                extra.insert("stop".into(), stops(chat.extra.get("stop")));
                let prompt = chatml(&chat.messages, prefix);
                let raw = ChatRequest {
                    messages: vec![ChatMessage::new("user", prompt)],
                    stream: None,
                    stream_options: None,
                    n: chat.n,
                    temperature: chat.temperature,
                    extra,
                };
                Some(ContinueCall { chat: raw, wire: Wire::Completions, uri: completions_uri(uri) })
            }
            (Wire::Chat, Continuation::None) => None,
        }
    }
}

/// The conversation in ChatML, ending inside the assistant's turn after `prefix`.
pub fn chatml(messages: &[ChatMessage], prefix: &str) -> String {
    let mut prompt = String::new();
    for m in messages {
        // `developer` is the newer name of `system`; ChatML templates know only the latter.
        let role = if m.role == "developer" { "system" } else { m.role.as_str() };
        prompt.push_str(&format!("<|im_start|>{role}\n{}<|im_end|>\n", m.text()));
    }
    prompt.push_str("<|im_start|>assistant\n");
    prompt.push_str(prefix);
    prompt
}

/// The client's stop sequences plus the end of a ChatML turn.
fn stops(client: Option<&Value>) -> Value {
    let mut all: Vec<Value> = match client {
        Some(Value::String(s)) => vec![Value::String(s.clone())],
        Some(Value::Array(items)) => items.iter().filter(|v| v.is_string()).cloned().collect(),
        _ => Vec::new(),
    };
    all.push(Value::String("<|im_end|>".into()));
    Value::Array(all)
}

/// The completions route beside the chat route the client called (same prefix, so an
/// upstream mounted under `/openai/v1/...` keeps it).
fn completions_uri(chat: &Uri) -> Uri {
    let path = chat.path();
    let target = match path.strip_suffix("/chat/completions") {
        Some(base) => format!("{base}/completions"),
        None => "/v1/completions".to_string(),
    };
    target.parse().unwrap_or_else(|_| Uri::from_static("/v1/completions"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(extra: Value) -> ChatRequest {
        let mut body = json!({"model": "m", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], "max_tokens": 300, "stream": true});
        if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
            b.extend(e);
        }
        serde_json::from_value(body).unwrap()
    }

    #[test]
    fn chatml_prompt_ends_inside_the_assistant_turn() {
        let r = request(json!({"response_format": {"type": "json_object"}, "stop": "END"}));
        let uri: Uri = "/openai/v1/chat/completions?x=1".parse().unwrap();
        let call = Continuation::ChatmlCompletions.call(&r, Wire::Chat, &uri, "Hello th", Some(48), 3).unwrap();
        assert_eq!(call.wire, Wire::Completions);
        assert_eq!(call.uri.path(), "/openai/v1/completions");
        assert_eq!(
            call.chat.messages[0].text(),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello th"
        );
        assert_eq!(call.chat.extra["max_tokens"], 48);
        assert_eq!(call.chat.extra["stop"], json!(["END", "<|im_end|>"]));
        assert_eq!(call.chat.n, Some(3));
        assert!(call.chat.stream.is_none());
        assert!(!call.chat.extra.contains_key("response_format"), "chat-only fields stay off the completions route");
    }

    #[test]
    fn assistant_prefix_asks_to_continue_the_final_message() {
        let r = request(json!({}));
        let uri: Uri = "/v1/chat/completions".parse().unwrap();
        let fresh = Continuation::AssistantPrefix.call(&r, Wire::Chat, &uri, "", None, 1).unwrap();
        assert_eq!(fresh.chat.messages.len(), 2);
        assert!(!fresh.chat.extra.contains_key("continue_final_message"));
        assert_eq!(fresh.chat.extra["max_tokens"], 300, "the request's own limit when none is given");
        let step = Continuation::AssistantPrefix.call(&r, Wire::Chat, &uri, "Sure", Some(16), 2).unwrap();
        assert_eq!(step.chat.messages.last().unwrap().role, "assistant");
        assert_eq!(step.chat.messages.last().unwrap().text(), "Sure");
        assert_eq!(step.chat.extra["continue_final_message"], true);
        assert_eq!(step.chat.extra["add_generation_prompt"], false);
        assert_eq!(step.chat.extra["max_tokens"], 16);
    }

    #[test]
    fn legacy_prompts_continue_as_raw_text_and_tools_do_not_continue() {
        let mut r = request(json!({}));
        r.messages = vec![ChatMessage::new("user", "Once upon a time")];
        let uri: Uri = "/v1/completions".parse().unwrap();
        let call = Continuation::None.call(&r, Wire::Completions, &uri, ", there was", Some(8), 1).unwrap();
        assert_eq!(call.chat.messages[0].text(), "Once upon a time, there was");
        assert_eq!(call.wire, Wire::Completions);
        let tools = request(json!({"tools": [{"type": "function", "function": {"name": "f"}}]}));
        assert!(Continuation::ChatmlCompletions.call(&tools, Wire::Chat, &uri, "x", None, 1).is_none());
        assert!(Continuation::None.call(&request(json!({})), Wire::Chat, &uri, "x", None, 1).is_none());
    }
}
