//! The fuzz targets' bodies, shared by the AFL binaries (`fuzz/bin/*.rs`) and the corpus
//! replay that CI runs (`tests/fuzz_corpus.rs`). Each takes arbitrary bytes, must not panic,
//! and checks what must hold for any input.
#![allow(dead_code)]

use bytes::Bytes;
use rulegate::openai::sse::Decoder;
use rulegate::openai::{ChatChunk, ChatRequest, legacy, responses};
use rulegate::pipeline::route::{Route, normalise_path};

/// The names of the targets, as the binaries and the corpus folders are called.
pub const TARGETS: [&str; 4] = ["sse", "request", "path", "policy"];

pub fn run(target: &str, data: &[u8]) {
    match target {
        "sse" => sse(data),
        "request" => request(data),
        "path" => path(data),
        "policy" => policy(data),
        other => panic!("no fuzz target {other}"),
    }
}

/// The upstream stream decoder: however the bytes are cut into reads (the first byte picks
/// the cuts), the same events come out; each event then goes through the chunk parsers and
/// the Responses and legacy stream translators.
pub fn sse(data: &[u8]) {
    let Some((&stride, body)) = data.split_first() else { return };
    let whole = decode(&[body]);
    let step = usize::from(stride % 17) + 1;
    let pieces: Vec<&[u8]> = body.chunks(step).collect();
    assert_eq!(decode(&pieces), whole, "the events depend on how the stream was cut");
    let mut translator = responses::StreamTranslator::new(responses::Echo::default());
    if let Ok(events) = whole {
        for event in events {
            let _ = serde_json::from_slice::<ChatChunk>(&event);
            if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&event) {
                let _ = legacy::chunk_to_chat(value);
            }
            let mut frame = b"data: ".to_vec();
            frame.extend_from_slice(&event);
            frame.extend_from_slice(b"\n\n");
            let _ = translator.frame(&frame);
            let _ = legacy::stream_frame(Bytes::from(frame));
        }
    }
    let _ = translator.frame(body);
}

fn decode(pieces: &[&[u8]]) -> Result<Vec<Vec<u8>>, String> {
    let mut decoder = Decoder::default();
    let mut events = Vec::new();
    for piece in pieces {
        events.extend(decoder.push(piece)?);
    }
    events.extend(decoder.finish());
    Ok(events)
}

/// A client's request body, read as each generation API reads it, and what rulegate derives
/// from it (the conversation the classifier sees, the body sent upstream).
pub fn request(data: &[u8]) {
    if let Ok((chat, echo)) = responses::to_chat(data) {
        let _ = chat.conversation();
        let _ = serde_json::to_vec(&chat);
        let _ = echo;
    }
    if let Ok(chat) = legacy::to_chat(data) {
        let _ = legacy::request_body(&chat);
        let _ = chat.conversation();
    }
    if let Ok(chat) = serde_json::from_slice::<ChatRequest>(data) {
        let _ = chat.conversation();
        let _ = (chat.is_stream(), chat.choices(), chat.include_usage());
        for message in &chat.messages {
            let _ = message.judged_text();
        }
        // What rulegate forwards must read back as the same request.
        let bytes = serde_json::to_vec(&chat).expect("a parsed request serialises");
        let again: ChatRequest = serde_json::from_slice(&bytes).expect("a forwarded request parses");
        assert_eq!(again.messages.len(), chat.messages.len());
    }
}

/// Request paths: the normalised form is rooted and has no empty, `.` or `..` segment, and
/// classifying never panics.
pub fn path(data: &[u8]) {
    let path = String::from_utf8_lossy(data);
    let normalised = normalise_path(&path);
    assert!(normalised.starts_with('/'), "{normalised:?}");
    if normalised.len() > 1 {
        for segment in normalised[1..].split('/') {
            assert!(!matches!(segment, "" | "." | ".."), "segment {segment:?} left in {normalised:?}");
        }
    }
    for method in [http::Method::POST, http::Method::GET] {
        let _ = Route::classify(&method, &path);
    }
}

/// Policy files: loading never panics; a policy that loads has a name and response types.
pub fn policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(policy) = rulegate::Policy::from_yaml(text, "fuzz.yaml") {
        assert!(!policy.response_types().is_empty());
    }
}
