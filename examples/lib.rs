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
//! - `cargo run -p buttress-examples --example axum_server_policy`: an axum
//!   server behind `Policy::server()`, one layer: a rate limit per client
//!   IP (429 with `Retry-After`), a bulkhead with a short queue that sheds
//!   the excess (503 with `Retry-After`), a timeout (504).
//! - `cargo run -p buttress-examples --example hyper_client_policy`: a
//!   hyper-util client under `Policy::api().build_http()` with a fallback in
//!   front: retries recover a transient failure and a hung answer, an
//!   outage opens the breaker, and the fallback answers while it is open.
//! - `cargo run -p buttress-examples --example tonic_policy`: tonic servers
//!   and a client under a `build_grpc()` policy, rejections mapped to gRPC
//!   statuses on both sides (`error_to_status`, `rejection_to_status`), and
//!   gRPC health (`TonicHealth`) that turns `NOT_SERVING` when a critical
//!   breaker opens.
//! - `cargo run -p buttress-examples --example config_gateway`: a gateway
//!   whose policies come from a TOML file that `PolicySet::watch` reloads:
//!   a limit raised in the file applies to live traffic, no request failed.
//! - `cargo run -p buttress-examples --example resilient_macro`:
//!   `#[buttress::resilient(policy = "database")]` on an async fn, and
//!   `PolicySet::execute` on a closure, under one named policy.
//!
//! Each example checks what it shows and exits with an error if something
//! goes otherwise; its test in `tests/` runs it against its peers on
//! 127.0.0.1.
#![forbid(unsafe_code)]
