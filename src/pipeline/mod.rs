//! The guarded request: call the upstream, judge every choice, act on the verdict
//! (pass, regenerate, best-of-n, fallback, block) within the policy's budget, and hold
//! streamed text back until it is judged. [`Pipeline`] is a `tower::Service` over typed
//! requests; [`http`] puts an HTTP face on it, used by both the sidecar and the Tower layer.
//!
//! The rooms, from the top down (each calls only the ones below it):
//! - `service.rs`: [`Pipeline`], which picks the guard, builds the request's context and
//!   reports the outcome when the response leaves (`complete.rs` runs it for
//!   [`Guard::complete`](crate::Guard::complete));
//! - `run.rs`, the dispatcher: the request's checks, the input check (`input.rs`), then a
//!   hold-back mode or the action loop;
//! - `holdback/`: one file per hold-back mode (buffer, window, passthrough, searched);
//! - `shadow.rs`: shadow mode, which judges as enforce would and delivers the upstream's
//!   answer unchanged;
//! - `decide.rs`: the decision dispatch over a class's action, and `strategy/`, one file per
//!   strategy (regenerate, best-of-n, beam search);
//! - `ctx.rs`: the per-request context every strategy and mode calls into;
//! - `exchange.rs`, `options.rs`, `outcome.rs`, `reply.rs`: the types they all share.
//!
//! `docs/architecture.md` walks one request through them.

mod complete;
mod ctx;
mod decide;
mod exchange;
mod holdback;
pub mod http;
mod input;
mod options;
mod outcome;
mod reply;
pub mod route;
mod run;
mod service;
mod shadow;
mod strategy;

pub use crate::access::{ApiKey, Selectors, UntrustedSelector};
pub use crate::openai::judged::UnjudgedFields;
pub use complete::{Completed, Refused};
pub use exchange::{EventStream, GuardedRequest, GuardedResponse, RESPONSE_TYPE_HEADER};
pub use options::{FailMode, GuardMode, PipelineOptions, UnreadableInput};
pub use outcome::{GuardAction, InputDecision, Outcome, StreamMode};
pub use reply::{ErrorKind, ErrorReply};
pub use service::Pipeline;
