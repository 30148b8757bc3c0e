//! Mapping rejections to `tonic::Status` (feature `tonic`).
//!
//! | error in the chain | code | metadata |
//! |---|---|---|
//! | [`BulkheadFull`] | `Unavailable` | `grpc-retry-pushback-ms` when known |
//! | [`CircuitOpen`] | `Unavailable` | `grpc-retry-pushback-ms` when known |
//! | [`RateLimited`] | `ResourceExhausted` | `grpc-retry-pushback-ms` when known |
//! | [`Elapsed`] | `DeadlineExceeded` | |
//! | a `tonic::Status` | itself | |
//! | anything else | `Internal`, without the error text | |

use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::error::{chain, BulkheadFull, CircuitOpen, Elapsed, RateLimited};

/// The `tonic::Status` for an error; see the [module docs](self).
///
/// ```
/// use buttress_core::error::{BoxError, CircuitOpen};
/// use buttress_core::grpc::status_from_error;
/// use std::time::Duration;
///
/// let err: BoxError = CircuitOpen::new("db".into(), Some(Duration::from_millis(1500))).into();
/// let status = status_from_error(&*err);
/// assert_eq!(status.code(), tonic::Code::Unavailable);
/// assert_eq!(status.metadata().get("grpc-retry-pushback-ms").unwrap(), "1500");
/// ```
pub fn status_from_error(err: &(dyn std::error::Error + 'static)) -> Status {
    for e in chain(err) {
        if let Some(s) = e.downcast_ref::<Status>() {
            return s.clone();
        }
        if let Some(e) = e.downcast_ref::<BulkheadFull>() {
            return with_pushback(Status::unavailable(e.to_string()), e.retry_after());
        }
        if let Some(e) = e.downcast_ref::<CircuitOpen>() {
            return with_pushback(Status::unavailable(e.to_string()), e.retry_after());
        }
        if let Some(e) = e.downcast_ref::<RateLimited>() {
            return with_pushback(Status::resource_exhausted(e.to_string()), e.retry_after());
        }
        if let Some(e) = e.downcast_ref::<Elapsed>() {
            return Status::deadline_exceeded(e.to_string());
        }
    }
    tracing::error!(error = %err, "unhandled error turned into Internal");
    Status::new(Code::Internal, "internal error")
}

fn with_pushback(mut status: Status, retry_after: Option<Duration>) -> Status {
    if let Some(wait) = retry_after {
        let ms = wait.as_millis() + u128::from(wait.subsec_nanos() % 1_000_000 != 0);
        status
            .metadata_mut()
            .insert("grpc-retry-pushback-ms", MetadataValue::from(ms as u64));
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{BoxError, BulkheadFullReason, RetryExhausted};

    #[test]
    fn maps_each_rejection_to_a_code() {
        let e: BoxError = BulkheadFull::new("b".into(), BulkheadFullReason::QueueFull).into();
        assert_eq!(status_from_error(&*e).code(), Code::Unavailable);
        let e: BoxError = RateLimited::new("r".into(), Some(Duration::from_micros(1500))).into();
        let s = status_from_error(&*e);
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(s.metadata().get("grpc-retry-pushback-ms").unwrap(), "2");
        let e: BoxError = Elapsed::new("t".into(), Duration::from_secs(1)).into();
        assert_eq!(status_from_error(&*e).code(), Code::DeadlineExceeded);
        let e: BoxError = RetryExhausted::new("r".into(), 2, Status::not_found("x").into()).into();
        assert_eq!(status_from_error(&*e).code(), Code::NotFound);
        let e: BoxError = "password=hunter2".into();
        let s = status_from_error(&*e);
        assert_eq!(s.code(), Code::Internal);
        assert!(!s.message().contains("hunter2"));
    }
}
