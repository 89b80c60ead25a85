//! The policy's input check: what the prompt wants, read before any upstream call, and what
//! the policy does about it (add guidance, answer with the fallback, or refuse).

use std::sync::Arc;

use super::ctx::Ctx;
use super::exchange::GuardedResponse;
use super::holdback::buffer::deliver;
use super::options::FailMode;
use super::outcome::{GuardAction, InputDecision, Outcome};
use super::reply::ErrorReply;
use super::strategy::{fallback_response, inject_guidance};
use crate::openai::ChatRequest;
use crate::policy::InputAction;
use crate::score::Verdict;
use crate::upstream::Upstream;

/// Runs the input check, if the policy has one, on a request whose response type the caller
/// may have stated. `Ok` gives the response type to judge under (when fixed) and whether the
/// guidance was added; `Err` is the response to send instead.
pub(crate) async fn check<U: Upstream>(
    ctx: &Arc<Ctx<U>>,
    chat: &mut ChatRequest,
    mut response_type: Option<usize>,
    outcome: &mut Outcome,
) -> Result<(Option<usize>, bool), GuardedResponse> {
    let mut guided = false;
    if let Some(check) = ctx.judge.policy().input_check() {
        // A stated response type is taken as it is: no model pass is needed to act on it.
        let typed = match response_type {
            Some(index) => Some((index, true, true)),
            None => match ctx.judged_in_time(read_prompt(ctx)).await {
                Ok(v) => {
                    let index = ctx.judge.response_type_index(&v.response_type).unwrap_or(0);
                    let probability = v.response_type_probs.get(&v.response_type).copied().map_or(1.0, f64::from);
                    // Only a confident reading is held for the completions; otherwise each
                    // completion is judged under the policy's `response_type_prediction`.
                    let pin = v.response_type_source == crate::score::ResponseTypeSource::Predicted;
                    Some((index, probability >= check.min_probability, pin))
                }
                Err(e) => {
                    if ctx.options.on_classifier_error == FailMode::Closed {
                        return Err(GuardedResponse::classifier_unavailable(&e, outcome.clone()));
                    }
                    tracing::warn!(error = %e, "input check failed; continuing without it (fail_open)");
                    None
                }
            },
        };
        if let Some((index, confident, pin)) = typed {
            if pin {
                response_type = Some(index);
            }
            if confident && let Some(action) = &check.actions[index] {
                let rt = ctx.response_type(index);
                outcome.response_type = Some(rt.name.clone());
                match action {
                    InputAction::Guidance => {
                        inject_guidance(chat, rt);
                        guided = true;
                        outcome.input_action = Some(InputDecision::Guidance);
                    }
                    InputAction::Fallback => {
                        outcome.input_action = Some(InputDecision::Fallback);
                        outcome.action = GuardAction::Fallback;
                        let response = fallback_response(chat, rt);
                        return Err(deliver(ctx, chat, response, outcome.clone()));
                    }
                    InputAction::Block { code, message } => {
                        outcome.input_action = Some(InputDecision::Block);
                        outcome.action = GuardAction::Block;
                        return Err(GuardedResponse::error(
                            ErrorReply::invalid_request(code.clone(), message.clone()),
                            outcome.clone(),
                        ));
                    }
                }
            }
        }
    }
    Ok((response_type, guided))
}

/// The prompt's reading for the input check: the conversation, and for a longer one also its
/// last user turn on its own (so filler turns cannot dilute a request); the stricter of the
/// two (more probability away from the policy's lenient `otherwise` type) wins. The model
/// reads the response type from the prompt alone, so an empty completion will do.
async fn read_prompt<U: Upstream>(ctx: &Ctx<U>) -> Result<Arc<Verdict>, crate::GuardError> {
    let gone = || crate::GuardError::Classifier(crate::ClassifierError::WorkersGone);
    let last_user = ctx.prompt.iter().rposition(|m| m.role.eq_ignore_ascii_case("user"));
    let alone = last_user.filter(|_| ctx.prompt.len() > 1).map(|i| std::slice::from_ref(&ctx.prompt[i]));
    let Some(alone) = alone else { return ctx.judge.evaluate(&ctx.prompt, "", None).await };
    let items = [
        crate::Evaluation { prompt: &ctx.prompt, completion: "", response_type: None },
        crate::Evaluation { prompt: alone, completion: "", response_type: None },
    ];
    let mut verdicts = ctx.judge.evaluate_batch(&items).await?;
    let policy = ctx.judge.policy();
    let lenient = policy.prediction().map_or(0, |p| p.otherwise);
    let lenient = policy.response_types().get(lenient).map_or("comply", |rt| rt.name.as_str());
    let strictness = |v: &Verdict| 1.0 - v.response_type_probs.get(lenient).copied().unwrap_or(1.0);
    let last = verdicts.pop().ok_or_else(gone)?;
    let whole = verdicts.pop().ok_or_else(gone)?;
    Ok(if strictness(&last) > strictness(&whole) { last } else { whole })
}
