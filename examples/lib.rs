//! Runnable examples of buttress; see the `[[example]]` targets:
//!
//! - `cargo run -p buttress-examples --example axum_server`: an axum server
//!   that protects itself with a bulkhead and a timeout, and exposes the
//!   registry as JSON at `/admin/resilience`.
//! - `cargo run -p buttress-examples --example hyper_client`: a hyper-util
//!   client whose calls are bounded by a bulkhead and a per-call timeout,
//!   acting on typed errors.
//! - `cargo run -p buttress-examples --example axum_rate_limit`: an axum
//!   server with a rate limit per client IP and a global one, the quota
//!   headers on every answer and 429s with `Retry-After`.
