//! Fallbacks for tower services: a value, a function or a secondary service when the primary fails or is rejected, chains, and a marker on every fallback response.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
