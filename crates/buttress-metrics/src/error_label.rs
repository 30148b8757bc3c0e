use std::convert::Infallible;

use buttress_core::error::kind_of;
use buttress_core::{BoxError, ErrorKind};

/// How an HTTP or gRPC service's error is labelled: its buttress
/// rejection kind as `error.type` (`_OTHER` for any other error), and for
/// gRPC, its status code.
///
/// Implemented for [`Infallible`] (axum), [`BoxError`] (any buttress
/// stack, `Box<dyn Error + Send + Sync>`), [`std::io::Error`] and, with
/// the `tonic` feature, `tonic::Status`. Another error type can be boxed
/// first (`map_err(BoxError::from)`).
///
/// ```
/// use buttress_core::{BoxError, CircuitOpen, ErrorKind};
/// use buttress_metrics::ErrorLabel;
///
/// let err: BoxError = CircuitOpen::new("db".into(), None).into();
/// assert_eq!(err.error_kind(), Some(ErrorKind::CircuitOpen));
/// ```
pub trait ErrorLabel {
    /// The buttress rejection in the error, if any.
    fn error_kind(&self) -> Option<ErrorKind>;

    /// The gRPC status code the error stands for, if it is one.
    fn grpc_code(&self) -> Option<i32> {
        None
    }
}

impl ErrorLabel for Infallible {
    fn error_kind(&self) -> Option<ErrorKind> {
        match *self {}
    }
}

impl ErrorLabel for BoxError {
    fn error_kind(&self) -> Option<ErrorKind> {
        kind_of(&**self)
    }
}

impl ErrorLabel for std::io::Error {
    fn error_kind(&self) -> Option<ErrorKind> {
        kind_of(self)
    }
}

#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
impl ErrorLabel for tonic::Status {
    fn error_kind(&self) -> Option<ErrorKind> {
        kind_of(self)
    }

    fn grpc_code(&self) -> Option<i32> {
        Some(self.code() as i32)
    }
}
