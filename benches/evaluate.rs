//! `Judge::evaluate_batch` end to end (tokenize, ONNX Runtime, rules, score) on the shipped
//! model, at 128, 256 and 512 tokens per pair and batches of 1 and 16; and packing alone
//! (tokenizing both sides) for prompts of 2 KB to 380 KB.
//! Run with `make bench`; results are recorded in benches/README.md.

use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rulegate::guard::Evaluation;
use rulegate::{Classifier, ClassifierOptions, Judge, Message, Policy};

fn judge() -> Judge {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let model = std::env::var("RULEGATE_MODEL").map_or_else(|_| root.join("models/rulegate-minilm-rbr"), Into::into);
    let policy = Arc::new(Policy::from_file(root.join("policies/refusal-style.yaml")).expect("policy"));
    let classifier =
        Classifier::load(model, &ClassifierOptions { max_batch: 16, ..ClassifierOptions::default() }).expect("model");
    Judge::new(policy, classifier).expect("judge")
}

/// A completion that packs to `tokens` tokens with the bench prompt (or the model's maximum).
fn completion_for(judge: &Judge, prompt: &[Message], tokens: usize) -> (String, usize) {
    let rendered = judge.classifier().render_prompt(prompt);
    let mut words = tokens;
    loop {
        let completion = "the data shows a steady rise "
            .repeat(words.div_ceil(6))
            .split(' ')
            .take(words)
            .collect::<Vec<_>>()
            .join(" ");
        let packed = judge.classifier().encoder().encode(&rendered, &completion).expect("encode").input_ids.len();
        if packed <= tokens || words == 0 {
            return (completion, packed);
        }
        words -= (packed - tokens).max(1);
    }
}

fn bench(c: &mut Criterion) {
    let judge = judge();
    let prompt = vec![Message::user(
        "Summarise the quarterly sales report for the board, focusing on the trends in each region.",
    )];
    let mut group = c.benchmark_group("evaluate");
    group.sample_size(20);
    for tokens in [128, 256, 512] {
        let (completion, packed) = completion_for(&judge, &prompt, tokens);
        for batch in [1usize, 16] {
            let items: Vec<Evaluation> = (0..batch)
                .map(|_| Evaluation { prompt: &prompt, completion: &completion, response_type: Some("comply") })
                .collect();
            group.throughput(Throughput::Elements(batch as u64));
            let id = BenchmarkId::new(format!("tokens_{tokens}_packed_{packed}"), format!("batch_{batch}"));
            group.bench_with_input(id, &items, |b, items| {
                b.iter(|| judge.evaluate_batch_blocking(items).expect("verdicts"))
            });
        }
    }
    group.finish();

    // Only the part of a long prompt the model can read is tokenized.
    let mut group = c.benchmark_group("encode");
    group.sample_size(20);
    let rendered = |kb: usize| {
        let words = "The committee reviewed the quarterly budget, the hiring plan and the roadmap. ";
        words.repeat((kb * 1024).div_ceil(words.len()))
    };
    for kb in [2usize, 45, 380] {
        let prompt = rendered(kb);
        group.bench_with_input(BenchmarkId::new("prompt_kb", kb), &prompt, |b, prompt| {
            b.iter(|| judge.classifier().encoder().encode(prompt, "Sure, here is the summary.").expect("encode"))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // Plot rendering needs system fonts, which slim machines and CI images lack; the numbers
    // (stdout and target/criterion/*/estimates.json) are what benches/README.md records.
    config = Criterion::default().without_plots();
    targets = bench
}
criterion_main!(benches);
