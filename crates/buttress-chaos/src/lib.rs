//! Fault injection for tower services: errors, latency, hangs and broken bodies, seeded and switchable at run time.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
