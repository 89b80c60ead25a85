//! A scripted OpenAI-compatible upstream (the one the tests use), for demos and load tests:
//! `cargo run --release --example mock_upstream -- 127.0.0.1:8000`.
//! See tests/common/mock.rs for the `x-mock-script` steps.

#[path = "../tests/common/mock.rs"]
mod mock;

#[tokio::main]
async fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8000".to_string());
    let upstream = mock::MockUpstream::start_on(&addr).await;
    eprintln!("mock upstream on {}", upstream.url());
    let _ = tokio::signal::ctrl_c().await;
}
