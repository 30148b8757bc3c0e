//! Cache-aside for tower services: moka in memory or Redis, single-flight on misses, stale-if-error and stale-while-revalidate, HTTP-aware keys and Cache-Control.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
