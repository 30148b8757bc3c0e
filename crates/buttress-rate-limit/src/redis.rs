//! A cluster-wide limiter whose state lives in Redis.
