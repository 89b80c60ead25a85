//! `best_of_n`: several candidates at once, the best delivered.

use std::sync::Arc;

use super::{ChoiceOutcome, Plan, Retry, resolve, retry_request};
use crate::guard::Evaluation;
use crate::openai::Choice;
use crate::pipeline::ctx::Ctx;
use crate::pipeline::outcome::GuardAction;
use crate::score::Verdict;
use crate::upstream::Upstream;

/// `best_of_n`: `n` candidates in all (within the policy's budget), the first included; the
/// best one is delivered, under the action's `exhausted` rule when none passes.
pub(crate) async fn best_of_n<U: Upstream>(
    ctx: &Arc<Ctx<U>>,
    plan: &Plan,
    rt: usize,
    first: (Choice, Arc<Verdict>),
    n: u32,
    retry: Retry,
) -> ChoiceOutcome {
    let rt_def = ctx.response_type(rt);
    let index = first.0.index;
    let need = n.min(ctx.judge.policy().budget().max_candidates).saturating_sub(1) as usize;
    let request = retry_request(plan, rt_def, retry, 1);
    let candidates = ctx.fetch_many(request, need, ctx.wire, &ctx.uri).await;
    let attempts = 1 + candidates.len() as u32;
    let texts: Vec<String> = candidates.iter().map(|c| c.message.judged_text()).collect();
    let items: Vec<Evaluation> = texts
        .iter()
        .map(|t| Evaluation { prompt: &ctx.prompt, completion: t, response_type: Some(&rt_def.name) })
        .collect();
    let mut best = first;
    match ctx.judged_in_time(ctx.judge.evaluate_batch(&items)).await {
        Ok(verdicts) => {
            for (choice, verdict) in candidates.into_iter().zip(verdicts) {
                if verdict.better_than(&best.1) {
                    best = (Choice { index, ..choice }, verdict);
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "classifier failed on best-of-n candidates; keeping the first"),
    }
    resolve(rt_def, best, GuardAction::BestOfN, attempts, retry.exhausted)
}
