//! Durable sagas as tower services: steps with compensations, a write-ahead log in SQLite or PostgreSQL, crash recovery and a transactional outbox.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
