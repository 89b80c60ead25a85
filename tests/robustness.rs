//! No panic on any input: property tests over everything that parses what a client or an
//! upstream sends (paths, request bodies in the three generation APIs, upstream answers and
//! stream frames, the tokenizer packing, policies). Each property runs 256 cases by default;
//! `PROPTEST_CASES=100000 cargo test --release --test robustness` runs a longer campaign.

mod common;

use bytes::Bytes;
use proptest::prelude::*;
use rulegate::openai::{legacy, responses};
use rulegate::pipeline::route::{Route, normalise_path};
use serde_json::Value;

/// Arbitrary JSON, biased toward the shapes the parsers look for.
fn json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("input".to_string()),
        Just("prompt".to_string()),
        Just("messages".to_string()),
        Just("role".to_string()),
        Just("content".to_string()),
        Just("type".to_string()),
        Just("text".to_string()),
        Just("tools".to_string()),
        Just("choices".to_string()),
        Just("delta".to_string()),
        Just("stream".to_string()),
        Just("n".to_string()),
        Just("usage".to_string()),
        Just("tool_calls".to_string()),
        Just("function".to_string()),
        Just("arguments".to_string()),
        Just("index".to_string()),
        "[a-z_]{1,12}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u32>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,40}".prop_map(Value::from),
        prop_oneof![
            Just("message"),
            Just("function_call"),
            Just("function_call_output"),
            Just("input_text"),
            Just("input_image"),
            Just("user"),
            Just("developer"),
            Just("function")
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn paths(path in "\\PC{0,80}", method in prop_oneof![Just("GET"), Just("POST"), Just("PUT"), Just("PATCH")]) {
        let normalised = normalise_path(&path);
        prop_assert!(normalised.starts_with('/'));
        let method: http::Method = method.parse().unwrap();
        let _ = Route::classify(&method, &path);
    }

    #[test]
    fn encoded_paths(segments in prop::collection::vec("(%[0-9a-fA-F]{2}|[a-z./\\\\;]){0,12}", 0..6)) {
        let path = format!("/{}", segments.join("/"));
        let _ = Route::classify(&http::Method::POST, &path);
    }

    #[test]
    fn request_bodies(value in json(), bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let text = serde_json::to_vec(&value).unwrap();
        for body in [&text[..], &bytes[..]] {
            let _ = responses::to_chat(body);
            if let Ok(chat) = legacy::to_chat(body) {
                let _ = legacy::request_body(&chat);
            }
            let _ = serde_json::from_slice::<rulegate::openai::ChatRequest>(body);
        }
    }

    #[test]
    fn upstream_answers(value in json()) {
        if let Ok(chat) = legacy::response_to_chat(value.clone()) {
            let _ = legacy::from_chat(&chat);
            let _ = responses::from_chat(&chat, &responses::Echo::default());
        }
        let _ = legacy::chunk_to_chat(value);
    }

    #[test]
    fn stream_frames(values in prop::collection::vec(json(), 0..8), raw in prop::collection::vec(any::<u8>(), 0..120)) {
        let mut translator = responses::StreamTranslator::new(responses::Echo::default());
        for value in &values {
            let frame = Bytes::from(format!("data: {value}\n\n"));
            let _ = translator.frame(&frame);
            let _ = legacy::stream_frame(frame);
        }
        let _ = translator.frame(&raw);
        let _ = legacy::stream_frame(Bytes::from(raw));
        let _ = translator.frame(b"data: [DONE]\n\n");
    }

    #[test]
    fn policies(text in "\\PC{0,300}") {
        let _ = rulegate::Policy::from_yaml(&text, "fuzz");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn tokenizer_packing(prompt in "\\PC{0,600}", completion in "\\PC{0,600}") {
        let encoder = encoder();
        let pair = encoder.encode(&prompt, &completion).unwrap();
        prop_assert!(pair.input_ids.len() <= encoder.max_length());
        prop_assert_eq!(pair.input_ids.len(), pair.token_type_ids.len());
        for window in encoder.completion_windows(&completion).unwrap() {
            prop_assert!(completion.get(window).is_some(), "windows fall on character boundaries");
        }
    }
}

fn encoder() -> &'static rulegate::classifier::PairEncoder {
    static ENCODER: std::sync::OnceLock<rulegate::classifier::PairEncoder> = std::sync::OnceLock::new();
    ENCODER.get_or_init(|| {
        let dir = common::default_model();
        let manifest = rulegate::classifier::Manifest::from_file(&dir.join("manifest.json")).unwrap();
        rulegate::classifier::PairEncoder::from_file(&dir.join("tokenizer.json"), manifest.encoding).unwrap()
    })
}
