//! rulegate inside a Rust service: [`GuardLayer`] wraps any `tower::Service` that speaks
//! OpenAI chat completions (a hyper client pointed at a model API, an axum route that
//! forwards to one) and guards `POST .../chat/completions` with the same pipeline as the
//! sidecar; every other request goes to the inner service untouched.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use rulegate::layer::GuardLayer;
//! use tower::ServiceBuilder;
//!
//! let layer = GuardLayer::builder()
//!     .policy("policies/refusal-style.yaml")
//!     .model("models/rulegate-minilm-rbr")
//!     .build()?;
//! # let model_client = tower::service_fn(|_req: http::Request<http_body_util::Full<bytes::Bytes>>| async {
//! #     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::new())))
//! # });
//! let guarded = ServiceBuilder::new().layer(layer).service(model_client);
//! # let _ = guarded;
//! # Ok(())
//! # }
//! ```

mod future;
#[allow(clippy::module_inception)]
mod layer;
mod service;

pub use future::ResponseFuture;
pub use layer::{BuildError, GuardLayer, GuardLayerBuilder};
pub use service::GuardService;
