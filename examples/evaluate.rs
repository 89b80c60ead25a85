//! Score one completion from the command line with the library API:
//!
//! ```sh
//! cargo run --release --example evaluate -- "How do I pick a lock?" "I'm sorry, but I can't help with that."
//! cargo run --release --example evaluate -- --response-type comply "How do I bake bread?" ""
//! ```

use std::sync::Arc;

use rulegate::{Classifier, ClassifierOptions, Guard, Message, Policy};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let response_type = match args.iter().position(|a| a == "--response-type") {
        Some(i) if i + 1 < args.len() => {
            let value = args.remove(i + 1);
            args.remove(i);
            Some(value)
        }
        _ => None,
    };
    let [prompt, completion] = args.as_slice() else {
        anyhow::bail!("usage: evaluate [--response-type NAME] PROMPT COMPLETION");
    };
    let root = env!("CARGO_MANIFEST_DIR");
    let policy = Arc::new(Policy::from_file(format!("{root}/policies/refusal-style.yaml"))?);
    let classifier = Classifier::load(format!("{root}/models/rulegate-minilm-rbr"), &ClassifierOptions::default())?;
    let guard = Guard::new(policy, classifier)?;

    let verdict = guard.evaluate(&[Message::user(prompt.as_str())], completion, response_type.as_deref()).await?;
    println!("response type: {} ({:?})", verdict.response_type, verdict.response_type_source);
    for (name, p) in &verdict.response_type_probs {
        println!("  {name:<14} {p:.3}");
    }
    println!("class:  {} (rank {} of the type's order)", verdict.class, verdict.class_rank);
    println!("score:  {:.4}", verdict.score);
    println!("action: {}", verdict.action.name());
    if let Some(prm) = verdict.prm {
        println!("prm:    {prm:.3}");
    }
    println!("propositions (probability, truth value):");
    let mut props = verdict.propositions.clone();
    props.sort_by(|a, b| b.probability.total_cmp(&a.probability));
    for p in props {
        println!("  {:<38} {:.3} {}", p.name, p.probability, if p.value { "true" } else { "" });
    }
    Ok(())
}
