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
//! - `cargo run -p buttress-examples --example tracing_with_tower_http`: an
//!   axum server with tower-http's `TraceLayer` and `tracing-subscriber`'s
//!   fmt output; the log shows a retry's attempts (spans inside the
//!   request's), the exhausted retry, the breaker opening and closing.
//! - `cargo run -p buttress-examples --example otel_traceparent`: W3C
//!   `traceparent` propagation through `tracing-opentelemetry` for a
//!   hyper-util client stack with buttress layers; every attempt of a
//!   retried call carries the caller's trace id.
//! - `cargo run -p buttress-examples --example alert_hook`: a listener on
//!   a circuit breaker that alerts once per opening and once per closing,
//!   at most once a minute per breaker, so that flapping cannot flood.
