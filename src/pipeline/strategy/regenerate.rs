//! `regenerate`: ask again, one completion at a time, until one passes.

use std::sync::Arc;

use super::{ChoiceOutcome, Plan, Retry, resolve, retry_request};
use crate::openai::Choice;
use crate::pipeline::ctx::Ctx;
use crate::pipeline::outcome::GuardAction;
use crate::policy::Action;
use crate::score::Verdict;
use crate::upstream::Upstream;

/// `regenerate`: asks for one more completion at a time, up to `max_attempts` (within the
/// policy's budget), until one passes; else the best one, under the action's `exhausted` rule.
pub(crate) async fn regenerate<U: Upstream>(
    ctx: &Arc<Ctx<U>>,
    plan: &Plan,
    rt: usize,
    first: (Choice, Arc<Verdict>),
    max_attempts: u32,
    retry: Retry,
) -> ChoiceOutcome {
    let rt_def = ctx.response_type(rt);
    let index = first.0.index;
    let budget = ctx.judge.policy().budget();
    let extra = max_attempts.min(budget.max_attempts.saturating_sub(1));
    let request = retry_request(plan, rt_def, retry, 1);
    let mut best = first;
    let mut attempts = 1;
    for _ in 0..extra {
        let Some(choice) = ctx.fetch_one(request.clone()).await else { break };
        attempts += 1;
        let text = choice.message.judged_text();
        let verdict = match ctx.judged_in_time(ctx.judge.evaluate(&ctx.prompt, &text, Some(&rt_def.name))).await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e, "classifier failed on a regenerated completion; keeping the best so far");
                break;
            }
        };
        let passes = verdict.action == Action::Pass;
        let candidate = (Choice { index, ..choice }, verdict);
        if passes {
            return ChoiceOutcome {
                choice: candidate.0,
                verdict: Some(candidate.1),
                action: GuardAction::Regenerate,
                attempts,
                block: None,
                search: None,
            };
        }
        if candidate.1.better_than(&best.1) {
            best = candidate;
        }
    }
    resolve(rt_def, best, GuardAction::Regenerate, attempts, retry.exhausted)
}
