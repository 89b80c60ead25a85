//! The dispatcher of one guarded request: the request's own checks, the input check, then
//! the hold-back mode (for a stream) or the action loop ([`decide`](super::decide)). It
//! calls down into them and hands down what they need (the searched mode gets the action
//! loop to run), so nothing below calls back up here.

use std::sync::Arc;

use super::ctx::Ctx;
use super::exchange::{GuardedRequest, GuardedResponse};
use super::holdback::buffer::deliver;
use super::options::{GuardMode, UnreadableInput};
use super::outcome::{Outcome, StreamMode};
use super::reply::ErrorReply;
use super::strategy::Plan;
use super::{decide, holdback, input, shadow};
use crate::openai::ChatRequest;
use crate::policy::HoldBack;
use crate::upstream::Upstream;

/// Runs one guarded request: checks what the request asks for, runs the policy's input
/// check, and hands the request to its hold-back mode or to the action loop.
pub(crate) async fn run<U: Upstream>(ctx: Arc<Ctx<U>>, request: GuardedRequest) -> GuardedResponse {
    let mut outcome = ctx.outcome();
    let mut chat = request.chat;
    if chat.messages.is_empty() {
        return GuardedResponse::error(
            ErrorReply::invalid_request("invalid_request", "`messages` must not be empty"),
            outcome,
        );
    }
    if ctx.options.unreadable_input == UnreadableInput::Refuse && chat.has_unreadable_content() {
        return GuardedResponse::error(
            ErrorReply::invalid_request(
                "unreadable_input",
                "this gateway judges text only; the request carries image, audio or file content \
             (`unreadable_input: refuse`)",
            ),
            outcome,
        );
    }
    // A stored answer could be read back later unjudged (reads are refused by default, but
    // the upstream keeps what it stores): nothing is stored on a guarded route.
    if chat.extra.get("store").is_some_and(|v| *v != serde_json::Value::Bool(false)) {
        chat.extra.insert("store".into(), serde_json::Value::Bool(false));
    }
    // Each choice runs its own action loop: `n` bounds the work a single request can cause.
    let max_choices = ctx.judge.policy().budget().max_candidates;
    if chat.n.is_some_and(|n| n == 0 || n > max_choices) {
        return GuardedResponse::error(
            ErrorReply::invalid_request(
                "too_many_choices",
                format!("`n` must be between 1 and {max_choices} (the policy's budget.max_candidates)"),
            ),
            outcome,
        );
    }
    let response_type = match &request.response_type {
        Some(label) => match ctx.judge.response_type_index(label) {
            Ok(i) => Some(i),
            Err(e) => {
                return GuardedResponse::error(
                    ErrorReply::invalid_request("unknown_response_type", e.to_string()),
                    outcome,
                );
            }
        },
        None => None,
    };
    // Shadow mode judges as enforce would and acts on nothing.
    if ctx.mode == GuardMode::Shadow {
        return shadow::shadow(ctx, chat, response_type, outcome).await;
    }
    let (response_type, guided) = match input::check(&ctx, &mut chat, response_type, &mut outcome).await {
        Ok(checked) => checked,
        Err(response) => return response,
    };

    let plan = Plan { response_type, guided, original: chat.clone() };
    if chat.is_stream() {
        let mode = ctx.judge.policy().streaming();
        outcome.mode = Some(StreamMode::from(&mode));
        if chat.choices() == 1 {
            match mode {
                HoldBack::Window { chars } => return holdback::window::window(ctx, plan, chars, outcome).await,
                HoldBack::Passthrough => return holdback::passthrough::passthrough(ctx, plan, outcome).await,
                HoldBack::Buffer => {
                    if searches(&ctx, &chat) {
                        let action_loop = move |ctx: Arc<Ctx<U>>, mut outcome: Outcome| async move {
                            let result = decide::decide(&ctx, plan, &mut outcome).await;
                            (result, outcome)
                        };
                        return holdback::searched::searched(ctx, chat, outcome, action_loop).await;
                    }
                }
            }
        } else {
            // Several choices cannot be judged while they interleave: hold them back whole.
            outcome.mode = Some(StreamMode::Buffer);
        }
    }
    match decide::decide(&ctx, plan, &mut outcome).await {
        Ok(response) => deliver(&ctx, &chat, response, outcome),
        Err(response) => response,
    }
}

/// Whether a request can be searched step by step (a `beam_search` action in its policy, an
/// upstream that continues prefixes): its stream may then start before the search ends.
fn searches<U: Upstream>(ctx: &Ctx<U>, chat: &ChatRequest) -> bool {
    let policy = ctx.judge.policy();
    let any = policy
        .response_types()
        .iter()
        .flat_map(|rt| &rt.classes)
        .any(|c| matches!(c.action, crate::policy::Action::BeamSearch { .. }));
    any && ctx.options.continuation.can_continue(chat, ctx.wire)
}
