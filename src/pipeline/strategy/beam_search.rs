//! Step-level beam search over partial answers (STAIR, arXiv 2502.02384).
//!
//! Each step asks the upstream for `expansions` continuations of every kept prefix, at most
//! `step_tokens` tokens each ([`Continuation`](crate::upstream::Continuation) says how the
//! upstream is asked to go on from a prefix). Every extended prefix is judged in one batch:
//! one that already reads as a class whose action is `fallback` or `block`, or as the
//! response type's worst class, is dropped, the others are ranked as finished candidates are
//! ([`Verdict::better_than`]: class, then the RBR score, then the PRM head) and the best
//! `beam_width` are kept. The PRM breaks ties rather than leading: the shipped model's PRM
//! ranks pairs of answers only about two times in three correctly (model card), and led, it
//! kept a harmful prefix over a refusal's (`tests/pipeline.rs`). A continuation that ends before its token budget is a finished
//! answer; the last step lets every kept prefix run to the request's own limit. The finished
//! answers, judged as whole completions, compete with the first completion for the final
//! pick, and the action's `exhausted` rule applies when none passes.
//!
//! Where the upstream cannot continue a prefix (no `continuation` configured, or a request
//! with tools), the search runs as best-of-n over `beam_width * expansions` candidates and
//! says so in `x-rulegate-search`.
//!
//! Work is bounded: at most `beam_width * expansions` continuations per step (within the
//! policy's `budget.max_candidates`), `max_steps` steps, and the request's deadline, past
//! which the search stops with what it has. A client that leaves drops the search with its
//! request.

use std::sync::Arc;

use super::best_of_n::best_of_n;
use super::{ChoiceOutcome, Plan, Retry, resolve, retry_request};
use crate::guard::Evaluation;
use crate::openai::{ChatMessage, Choice};
use crate::pipeline::ctx::Ctx;
use crate::pipeline::outcome::GuardAction;
use crate::policy::Action;
use crate::score::Verdict;
use crate::upstream::Upstream;

/// The search's shape, from the policy's `beam_search` action.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    pub(crate) beam_width: u32,
    pub(crate) expansions: u32,
    pub(crate) max_steps: u32,
    pub(crate) step_tokens: u32,
}

/// An answer being written: the text so far and, once finished, why it ended.
struct Beam {
    text: String,
    finish_reason: Option<String>,
    verdict: Arc<Verdict>,
}

/// `beam_search`: the search described above, for one choice.
pub(crate) async fn beam_search<U: Upstream>(
    ctx: &Arc<Ctx<U>>,
    plan: &Plan,
    rt: usize,
    first: (Choice, Arc<Verdict>),
    shape: Shape,
    retry: Retry,
) -> ChoiceOutcome {
    let rt_def = ctx.response_type(rt);
    let budget = ctx.judge.policy().budget();
    let width = shape.beam_width.max(1) as usize;
    // Continuations per step stay within the policy's candidate budget.
    let per_step = (shape.beam_width * shape.expansions).min(budget.max_candidates).max(1) as usize;
    let expansions = (per_step / width).max(1);
    let base = retry_request(plan, rt_def, retry, 1);
    let continuation = ctx.options.continuation;
    if !continuation.can_continue(&base, ctx.wire) {
        let mut outcome = best_of_n(ctx, plan, rt, first, per_step as u32 + 1, retry).await;
        outcome.search = Some("best_of_n; the upstream cannot continue a prefix".into());
        return outcome;
    }
    let index = first.0.index;
    let client_limit = base
        .extra
        .get("max_tokens")
        .or_else(|| base.extra.get("max_completion_tokens"))
        .and_then(serde_json::Value::as_u64);

    let mut live = vec![String::new()];
    let mut finished: Vec<Beam> = Vec::new();
    let (mut steps, mut calls, mut continuations, mut pruned) = (0u32, 0usize, 0usize, 0usize);
    for step in 1..=shape.max_steps {
        if live.is_empty() || ctx.remaining().is_zero() {
            break;
        }
        steps = step;
        let spent = u64::from(shape.step_tokens) * u64::from(step - 1);
        let left = client_limit.map(|l| l.saturating_sub(spent));
        if left == Some(0) {
            break;
        }
        let last = step == shape.max_steps;
        // Every step but the last is cut at its token budget; the last runs to the request's limit.
        let limit = if last {
            left
        } else {
            Some(left.map_or(u64::from(shape.step_tokens), |l| l.min(u64::from(shape.step_tokens))))
        };
        let limit = limit.map(|l| u32::try_from(l).unwrap_or(u32::MAX));
        let expand = live.iter().filter_map(|prefix| {
            let call = continuation.call(&base, ctx.wire, &ctx.uri, prefix, limit, 1)?;
            Some(async move {
                let got = ctx.fetch_many(call.chat, expansions, call.wire, &call.uri).await;
                (prefix.clone(), got)
            })
        });
        calls += live.len();
        let expanded = futures::future::join_all(expand).await;
        let mut candidates: Vec<(String, Option<String>)> = Vec::new();
        for (prefix, choices) in expanded {
            for choice in choices {
                continuations += 1;
                let text = format!("{prefix}{}", choice.message.text());
                // A continuation cut by the step's budget goes on; anything else (the end of the
                // answer, or the request's own token limit) finished it.
                let cut_by_step =
                    choice.finish_reason.as_deref() == Some("length") && !last && left != limit.map(u64::from);
                let reason = (!cut_by_step).then(|| choice.finish_reason.unwrap_or_else(|| "stop".into()));
                if !candidates.iter().any(|(t, _)| *t == text) {
                    candidates.push((text, reason));
                }
            }
        }
        if candidates.is_empty() {
            break;
        }
        let items: Vec<Evaluation> = candidates
            .iter()
            .map(|(t, _)| Evaluation { prompt: &ctx.prompt, completion: t, response_type: Some(&rt_def.name) })
            .collect();
        let verdicts = match ctx.judged_in_time(ctx.judge.evaluate_batch(&items)).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "classifier failed during beam search; keeping the best so far");
                break;
            }
        };
        let mut next: Vec<Beam> = Vec::new();
        for ((text, finish_reason), verdict) in candidates.into_iter().zip(verdicts) {
            if hopeless(&verdict, rt_def.classes.len()) {
                pruned += 1;
                continue;
            }
            let beam = Beam { text, finish_reason, verdict };
            if beam.finish_reason.is_some() { finished.push(beam) } else { next.push(beam) }
        }
        next.sort_by(|a, b| {
            if a.verdict.better_than(&b.verdict) {
                std::cmp::Ordering::Less
            } else if b.verdict.better_than(&a.verdict) {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        });
        next.truncate(width);
        live = next.into_iter().map(|b| b.text).collect();
        if ctx.can_release() && !release_shared(ctx, &rt_def.name, &live, &finished).await {
            break;
        }
        // Enough finished answers to pick from: more steps would only refine the beams left.
        if finished.len() >= width && finished.iter().any(|b| b.verdict.action == Action::Pass) {
            break;
        }
    }

    // Once text has left, only answers that extend it can be delivered: the first completion
    // competes only while nothing was released (a released stream whose search found no
    // answer ends with `content_filter`).
    let released = ctx.released();
    let mut best = first;
    // Whether `best` can be delivered: once text was released, the first completion cannot
    // (it does not extend that text), so the first finished answer replaces it unranked.
    let mut deliverable = released.is_empty();
    for beam in finished.into_iter().filter(|b| b.text.starts_with(&released)) {
        if !deliverable || beam.verdict.better_than(&best.1) {
            let choice = Choice {
                index,
                message: ChatMessage::new("assistant", beam.text),
                finish_reason: beam.finish_reason,
                extra: serde_json::Map::new(),
            };
            best = (choice, beam.verdict);
            deliverable = true;
        }
    }
    let mut outcome = resolve(rt_def, best, GuardAction::BeamSearch, 1 + continuations as u32, retry.exhausted);
    outcome.search = Some(format!("steps={steps} calls={calls} continuations={continuations} pruned={pruned}"));
    outcome
}

/// Releases the prefix every answer still in the race shares (kept and finished beams), cut
/// at whitespace (a step may end inside a word), once that prefix, judged on its own as a
/// completion, passes. `false` when the client is gone.
async fn release_shared<U: Upstream>(
    ctx: &Arc<Ctx<U>>,
    response_type: &str,
    live: &[String],
    finished: &[Beam],
) -> bool {
    let mut texts = live.iter().map(String::as_str).chain(finished.iter().map(|b| b.text.as_str()));
    let Some(first) = texts.next() else { return true };
    let mut shared = first.len();
    for text in texts {
        shared = first.bytes().zip(text.bytes()).take(shared).take_while(|(a, b)| a == b).count();
    }
    while !first.is_char_boundary(shared) {
        shared -= 1;
    }
    let Some(cut) = first[..shared].rfind(char::is_whitespace) else { return true };
    let prefix = &first[..cut];
    if prefix.trim().is_empty() || prefix.len() <= ctx.released().len() {
        return true;
    }
    let verdict = ctx.judged_in_time(ctx.judge.evaluate(&ctx.prompt, prefix, Some(response_type))).await;
    match verdict {
        Ok(v) if v.action == Action::Pass => ctx.release(prefix).await,
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(error = %e, "classifier failed on a shared prefix; holding it back");
            true
        }
    }
}

/// Whether a prefix already reads as something the search must not build on: a class the
/// policy never delivers (`fallback`, `block`), or the response type's worst class (the
/// disallowed class in the shipped policy, whatever action a policy gives it).
fn hopeless(verdict: &Verdict, classes: usize) -> bool {
    matches!(verdict.action, Action::Fallback | Action::Block { .. }) || verdict.class_rank + 1 >= classes
}
