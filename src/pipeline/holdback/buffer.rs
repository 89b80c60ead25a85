//! `buffer` mode: the action loop decides the whole completion, which is then replayed as
//! a stream (or sent as JSON when no stream was asked for).

use bytes::Bytes;

use super::verdict_comment;
use crate::openai::chunks::replay_events;
use crate::openai::{ChatRequest, ChatResponse, sse};
use crate::pipeline::ctx::Ctx;
use crate::pipeline::exchange::{EventStream, GuardedResponse};
use crate::pipeline::outcome::Outcome;
use crate::upstream::Upstream;

/// Sends a complete response, as JSON or, for a streamed request, as SSE.
pub(crate) fn deliver<U: Upstream>(
    ctx: &Ctx<U>,
    chat: &ChatRequest,
    mut response: ChatResponse,
    outcome: Outcome,
) -> GuardedResponse {
    response.usage = ctx.usage().or(response.usage);
    if chat.is_stream() {
        let events = replay(response, chat.include_usage(), &outcome);
        GuardedResponse::Stream { events, outcome }
    } else {
        GuardedResponse::Complete { response, outcome }
    }
}

/// Streams a decided completion (`buffer` mode): role, text in pieces, finish reason, the
/// summed usage when asked for, the verdict comment, `[DONE]`.
pub(crate) fn replay(response: ChatResponse, include_usage: bool, outcome: &Outcome) -> EventStream {
    let mut events = replay_events(&response, include_usage);
    events.push(verdict_comment(outcome));
    events.push(Bytes::from_static(sse::DONE));
    Box::pin(futures::stream::iter(events))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::ChatChunk;
    use crate::upstream::ChunkStream;
    use futures::StreamExt;
    use serde_json::Value;

    #[tokio::test]
    async fn collect_keeps_streamed_tool_calls_and_unknown_fields() {
        let chunks: Vec<ChatChunk> = [
            r#"{"id":"c","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"run","arguments":""}}]}}]}"#,
            r#"{"id":"c","created":1,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"cmd\":"}}]}}]}"#,
            r#"{"id":"c","created":1,"model":"m","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"ls\"}"}}],"reasoning_content":"think"}}]}"#,
            r#"{"id":"c","created":1,"model":"m","choices":[{"index":0,"delta":{"reasoning_content":"ing"},"finish_reason":"tool_calls"}]}"#,
        ]
        .iter()
        .map(|t| serde_json::from_str(t).unwrap())
        .collect();
        let stream: ChunkStream = Box::pin(futures::stream::iter(chunks.into_iter().map(Ok)));
        let response = crate::upstream::collect(stream).await.unwrap();
        let message = &response.choices[0].message;
        let call = &message.extra["tool_calls"][0];
        assert_eq!(call["id"], "call_1");
        assert_eq!(call["function"]["name"], "run");
        assert_eq!(call["function"]["arguments"], r#"{"cmd":"ls"}"#);
        assert_eq!(message.extra["reasoning_content"], "thinking");
        assert_eq!(response.choices[0].finish_reason.as_deref(), Some("tool_calls"));
        // The judge reads the call's arguments, and the reasoning delivered beside them.
        assert_eq!(message.judged_text(), "run({\"cmd\":\"ls\"})\nthinking");

        // Replayed as SSE and collected again, nothing is lost.
        let replayed: Vec<Bytes> = replay(response.clone(), false, &Outcome::default()).collect().await;
        let again: Vec<ChatChunk> = replayed
            .iter()
            .filter_map(|e| std::str::from_utf8(e).ok()?.strip_prefix("data: ")?.trim().parse::<String>().ok())
            .filter(|d| d != "[DONE]")
            .map(|d| serde_json::from_str(&d).unwrap())
            .collect();
        let stream: ChunkStream = Box::pin(futures::stream::iter(again.into_iter().map(Ok)));
        let back = crate::upstream::collect(stream).await.unwrap();
        assert_eq!(back.choices[0].message.extra["tool_calls"], message.extra["tool_calls"]);
        assert_eq!(back.choices[0].message.extra["reasoning_content"], "thinking");
    }

    proptest::proptest! {
        /// For any stream the upstream sends, `buffer` mode delivers only strings the judge
        /// read: each chunk sanitized as it arrives, the stream assembled and judged, the
        /// assembled answer replayed; every string of every replayed delta is in the judged
        /// text (bar the role and tool-call ids and types).
        #[test]
        fn buffered_streams_deliver_only_judged_text(
            deltas in proptest::collection::vec(crate::openai::judged::tests::answer_json(), 1..6)
        ) {
            use crate::openai::judged::{UnjudgedFields, sanitize_chunk_choice};
            let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
            for mode in [UnjudgedFields::Drop, UnjudgedFields::Judge] {
                let chunks: Vec<ChatChunk> = deltas
                    .iter()
                    .filter_map(|d| {
                        let value = serde_json::json!({"id": "c", "created": 1, "model": "m",
                            "choices": [{"index": 0, "delta": d}]});
                        let mut chunk: ChatChunk = serde_json::from_value(value).ok()?;
                        chunk.choices.iter_mut().for_each(|c| sanitize_chunk_choice(c, mode));
                        Some(chunk)
                    })
                    .collect();
                if chunks.is_empty() {
                    continue;
                }
                let stream: ChunkStream = Box::pin(futures::stream::iter(chunks.into_iter().map(Ok)));
                let response = runtime.block_on(crate::upstream::collect(stream)).unwrap();
                let judged = response.choices[0].message.judged_text();
                let events: Vec<Bytes> = runtime.block_on(replay(response, false, &Outcome::default()).collect());
                for event in events {
                    let Some(data) = std::str::from_utf8(&event).ok().and_then(|e| e.strip_prefix("data: ")) else {
                        continue;
                    };
                    let Ok(chunk) = serde_json::from_str::<Value>(data.trim()) else { continue };
                    for choice in chunk["choices"].as_array().into_iter().flatten() {
                        let mut found = Vec::new();
                        crate::openai::judged::tests::delivered_strings(&choice["delta"], &mut Vec::new(), &mut found);
                        for (path, s) in found {
                            proptest::prop_assert!(judged.contains(&s), "{path} = {s:?} delivered, judged {judged:?}");
                        }
                    }
                }
            }
        }
    }
}
