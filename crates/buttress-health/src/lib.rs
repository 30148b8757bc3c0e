//! Health checks for tower services: timeouts, retries, dependencies between checks, liveness and readiness endpoints, tonic-health.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
