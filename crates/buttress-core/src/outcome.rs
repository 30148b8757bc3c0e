//! Outcome classification: is a result a success, a failure, or neither?

use std::fmt;

use http::{HeaderMap, Response, StatusCode};
use tower_http::classify::{
    ClassifiedResponse, ClassifyEos, ClassifyResponse, GrpcErrorsAsFailures,
};

pub use tower_http::classify::GrpcCode;

/// How a pattern should count one call.
///
/// Circuit breakers record successes and failures in their window; retry
/// retries failures; `Ignored` frees whatever the call held without being
/// counted at all (for example a call that the caller cancelled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Outcome {
    /// The call succeeded (or failed through the caller's own fault).
    Success,
    /// The call failed because the dependency is unhealthy.
    Failure,
    /// The call is not counted.
    Ignored,
}

impl Outcome {
    /// `true` for [`Outcome::Failure`].
    pub fn is_failure(self) -> bool {
        matches!(self, Outcome::Failure)
    }

    /// `true` for [`Outcome::Success`].
    pub fn is_success(self) -> bool {
        matches!(self, Outcome::Success)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Ignored => "ignored",
        })
    }
}

/// Maps the result of a call to an [`Outcome`].
///
/// Any `Fn(&Result<Res, E>) -> Outcome` is a classifier, so ad-hoc rules are
/// closures:
///
/// ```
/// use buttress_core::{Classifier, Outcome};
///
/// let only_timeouts = |res: &Result<u16, std::io::Error>| match res {
///     Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Outcome::Failure,
///     Err(_) => Outcome::Ignored,
///     Ok(_) => Outcome::Success,
/// };
/// assert_eq!(only_timeouts.classify(&Ok(200)), Outcome::Success);
/// ```
pub trait Classifier<Res, E> {
    /// Classify one result.
    fn classify(&self, result: &Result<Res, E>) -> Outcome;
}

impl<F, Res, E> Classifier<Res, E> for F
where
    F: Fn(&Result<Res, E>) -> Outcome,
{
    fn classify(&self, result: &Result<Res, E>) -> Outcome {
        self(result)
    }
}

/// Wraps a classifier: results matching `pred` are
/// [`Ignored`](Outcome::Ignored), the others are classified by `inner`
/// (Resilience4j's `ignoreExceptions`, for any result).
///
/// ```
/// use buttress_core::{Classifier, ErrorsAsFailures, IgnoreIf, Outcome};
///
/// // A cancelled request says nothing about the dependency's health.
/// let c = IgnoreIf::new(ErrorsAsFailures, |r: &Result<(), &str>| r == &Err("cancelled"));
/// assert_eq!(c.classify(&Err("cancelled")), Outcome::Ignored);
/// assert_eq!(c.classify(&Err("refused")), Outcome::Failure);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct IgnoreIf<C, F> {
    inner: C,
    pred: F,
}

impl<C, F> IgnoreIf<C, F> {
    /// Ignores what `pred` matches, classifies the rest with `inner`.
    pub fn new(inner: C, pred: F) -> Self {
        Self { inner, pred }
    }
}

impl<C, F, Res, E> Classifier<Res, E> for IgnoreIf<C, F>
where
    C: Classifier<Res, E>,
    F: Fn(&Result<Res, E>) -> bool,
{
    fn classify(&self, result: &Result<Res, E>) -> Outcome {
        if (self.pred)(result) {
            Outcome::Ignored
        } else {
            self.inner.classify(result)
        }
    }
}

/// The default classifier: every `Ok` is a success, every `Err` a failure.
///
/// ```
/// use buttress_core::{Classifier, ErrorsAsFailures, Outcome};
///
/// let c = ErrorsAsFailures;
/// assert_eq!(Classifier::<(), &str>::classify(&c, &Err("boom")), Outcome::Failure);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorsAsFailures;

impl<Res, E> Classifier<Res, E> for ErrorsAsFailures {
    fn classify(&self, result: &Result<Res, E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }
}

/// HTTP classification: errors, `5xx` and `429 Too Many Requests` are failures;
/// every other status (including the other `4xx`, which are the caller's
/// fault) is a success.
///
/// ```
/// use buttress_core::{Classifier, HttpClassifier, Outcome};
/// use http::{Response, StatusCode};
///
/// let c = HttpClassifier::new();
/// let res = Response::builder().status(StatusCode::NOT_FOUND).body(()).unwrap();
/// assert_eq!(Classifier::<_, ()>::classify(&c, &Ok(res)), Outcome::Success);
/// let res = Response::builder().status(StatusCode::BAD_GATEWAY).body(()).unwrap();
/// assert_eq!(Classifier::<_, ()>::classify(&c, &Ok(res)), Outcome::Failure);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct HttpClassifier {
    too_many_requests_is_failure: bool,
}

impl Default for HttpClassifier {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClassifier {
    /// The preset: `5xx` and `429` are failures.
    pub const fn new() -> Self {
        Self {
            too_many_requests_is_failure: true,
        }
    }

    /// Whether `429 Too Many Requests` counts as a failure (default `true`).
    pub const fn too_many_requests_is_failure(mut self, yes: bool) -> Self {
        self.too_many_requests_is_failure = yes;
        self
    }

    /// Classify a status code alone.
    pub fn classify_status(&self, status: StatusCode) -> Outcome {
        if status.is_server_error()
            || (self.too_many_requests_is_failure && status == StatusCode::TOO_MANY_REQUESTS)
        {
            Outcome::Failure
        } else {
            Outcome::Success
        }
    }
}

impl<B, E> Classifier<Response<B>, E> for HttpClassifier {
    fn classify(&self, result: &Result<Response<B>, E>) -> Outcome {
        match result {
            Ok(res) => self.classify_status(res.status()),
            Err(_) => Outcome::Failure,
        }
    }
}

/// gRPC classification of HTTP responses by their `grpc-status`.
///
/// `Unavailable`, `DeadlineExceeded`, `ResourceExhausted`, `Internal`,
/// `Unknown` and `DataLoss` are failures; the other codes (`NotFound`,
/// `InvalidArgument`, ...) are the caller's fault and count as success.
/// Transport errors are failures.
///
/// A trailers-only response (an error sent before any message, as servers do
/// for rejections) carries `grpc-status` in its headers and is classified
/// from them. A streamed response carries it in the trailers, which arrive
/// with the end of the body: such a response counts as a success when its
/// headers arrive, and [`GrpcClassifier::classify_trailers`] classifies the
/// trailers for layers that follow the body. The status table is
/// `tower_http::classify`'s.
///
/// ```
/// use buttress_core::{Classifier, GrpcClassifier, Outcome};
/// use http::Response;
///
/// let c = GrpcClassifier::new();
/// let unavailable = Response::builder().header("grpc-status", "14").body(()).unwrap();
/// assert_eq!(Classifier::<_, ()>::classify(&c, &Ok(unavailable)), Outcome::Failure);
/// let not_found = Response::builder().header("grpc-status", "5").body(()).unwrap();
/// assert_eq!(Classifier::<_, ()>::classify(&c, &Ok(not_found)), Outcome::Success);
/// ```
#[derive(Debug, Clone)]
pub struct GrpcClassifier {
    inner: GrpcErrorsAsFailures,
}

impl Default for GrpcClassifier {
    fn default() -> Self {
        Self::new()
    }
}

impl GrpcClassifier {
    /// The codes that count as success in the preset.
    pub const SUCCESS_CODES: [GrpcCode; 11] = [
        GrpcCode::Ok,
        GrpcCode::Cancelled,
        GrpcCode::InvalidArgument,
        GrpcCode::NotFound,
        GrpcCode::AlreadyExists,
        GrpcCode::PermissionDenied,
        GrpcCode::FailedPrecondition,
        GrpcCode::Aborted,
        GrpcCode::OutOfRange,
        GrpcCode::Unimplemented,
        GrpcCode::Unauthenticated,
    ];

    /// The preset described above.
    pub fn new() -> Self {
        let inner = Self::SUCCESS_CODES
            .iter()
            .fold(GrpcErrorsAsFailures::new(), |c, code| c.with_success(*code));
        Self { inner }
    }

    /// Count one more code as success (for example `Unknown`, for a server
    /// that uses it for application errors).
    pub fn with_success(self, code: GrpcCode) -> Self {
        Self {
            inner: self.inner.with_success(code),
        }
    }

    /// Classify the headers of a response (`grpc-status` present only in a
    /// trailers-only response).
    pub fn classify_headers(&self, headers: &HeaderMap) -> Outcome {
        let mut res = Response::new(());
        *res.headers_mut() = headers.clone();
        self.classify_response(&res)
    }

    fn classify_response<B>(&self, res: &Response<B>) -> Outcome {
        match self.inner.clone().classify_response(res) {
            ClassifiedResponse::Ready(Ok(())) => Outcome::Success,
            ClassifiedResponse::Ready(Err(_)) => Outcome::Failure,
            ClassifiedResponse::RequiresEos(_) => Outcome::Success,
        }
    }

    /// Classify the trailers that end a streamed gRPC response.
    pub fn classify_trailers(&self, trailers: Option<&HeaderMap>) -> Outcome {
        let res = Response::new(());
        match self.inner.clone().classify_response(&res) {
            ClassifiedResponse::RequiresEos(eos) => match eos.classify_eos(trailers) {
                Ok(()) => Outcome::Success,
                Err(_) => Outcome::Failure,
            },
            // Unreachable for an empty header map; treat as success.
            ClassifiedResponse::Ready(_) => Outcome::Success,
        }
    }
}

impl<B, E> Classifier<Response<B>, E> for GrpcClassifier {
    fn classify(&self, result: &Result<Response<B>, E>) -> Outcome {
        match result {
            Ok(res) => self.classify_response(res),
            Err(_) => Outcome::Failure,
        }
    }
}

/// Classifies the `tonic::Status` errors of a tonic client with the same
/// code table as [`GrpcClassifier`].
///
/// ```
/// use buttress_core::{Classifier, Outcome, TonicStatusClassifier};
///
/// let c = TonicStatusClassifier::new();
/// let res: Result<(), tonic::Status> = Err(tonic::Status::unavailable("down"));
/// assert_eq!(c.classify(&res), Outcome::Failure);
/// let res: Result<(), tonic::Status> = Err(tonic::Status::not_found("nope"));
/// assert_eq!(c.classify(&res), Outcome::Success);
/// ```
#[cfg(feature = "tonic")]
#[derive(Debug, Clone, Default)]
pub struct TonicStatusClassifier {
    _priv: (),
}

#[cfg(feature = "tonic")]
impl TonicStatusClassifier {
    /// The preset.
    pub fn new() -> Self {
        Self { _priv: () }
    }

    /// Classify one status code.
    pub fn classify_code(&self, code: tonic::Code) -> Outcome {
        use tonic::Code;
        match code {
            Code::Unavailable
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Internal
            | Code::Unknown
            | Code::DataLoss => Outcome::Failure,
            _ => Outcome::Success,
        }
    }
}

#[cfg(feature = "tonic")]
impl<Res> Classifier<Res, tonic::Status> for TonicStatusClassifier {
    fn classify(&self, result: &Result<Res, tonic::Status>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(status) => self.classify_code(status.code()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> Result<Response<()>, ()> {
        Ok(Response::builder().status(code).body(()).unwrap())
    }

    #[test]
    fn http_preset_fails_5xx_and_429_only() {
        let c = HttpClassifier::new();
        assert_eq!(c.classify(&status(200)), Outcome::Success);
        assert_eq!(c.classify(&status(404)), Outcome::Success);
        assert_eq!(c.classify(&status(400)), Outcome::Success);
        assert_eq!(c.classify(&status(429)), Outcome::Failure);
        assert_eq!(c.classify(&status(500)), Outcome::Failure);
        assert_eq!(c.classify(&status(503)), Outcome::Failure);
        assert_eq!(c.classify(&Err::<Response<()>, ()>(())), Outcome::Failure);
        let lenient = HttpClassifier::new().too_many_requests_is_failure(false);
        assert_eq!(lenient.classify(&status(429)), Outcome::Success);
    }

    fn grpc(code: &str) -> Result<Response<()>, ()> {
        Ok(Response::builder()
            .header("grpc-status", code)
            .body(())
            .unwrap())
    }

    #[test]
    fn grpc_preset_by_code_in_trailers_only_response() {
        let c = GrpcClassifier::new();
        assert_eq!(c.classify(&grpc("0")), Outcome::Success);
        for failing in ["2", "4", "8", "13", "14", "15"] {
            assert_eq!(
                c.classify(&grpc(failing)),
                Outcome::Failure,
                "code {failing}"
            );
        }
        for ok in ["1", "3", "5", "6", "7", "9", "10", "11", "12", "16"] {
            assert_eq!(c.classify(&grpc(ok)), Outcome::Success, "code {ok}");
        }
        // Status in the trailers: unknown at header time.
        assert_eq!(c.classify(&status(200)), Outcome::Success);
        assert_eq!(c.classify(&Err::<Response<()>, ()>(())), Outcome::Failure);
        let unknown_ok = GrpcClassifier::new().with_success(GrpcCode::Unknown);
        assert_eq!(unknown_ok.classify(&grpc("2")), Outcome::Success);
    }

    #[test]
    fn grpc_trailers_and_headers() {
        let c = GrpcClassifier::new();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "14".parse().unwrap());
        assert_eq!(c.classify_trailers(Some(&trailers)), Outcome::Failure);
        assert_eq!(c.classify_headers(&trailers), Outcome::Failure);
        trailers.insert("grpc-status", "0".parse().unwrap());
        assert_eq!(c.classify_trailers(Some(&trailers)), Outcome::Success);
        assert_eq!(c.classify_trailers(None), Outcome::Success);
    }

    #[test]
    fn closures_are_classifiers() {
        let c = |r: &Result<u8, ()>| match r {
            Ok(0) => Outcome::Ignored,
            Ok(_) => Outcome::Success,
            Err(()) => Outcome::Failure,
        };
        assert_eq!(c.classify(&Ok(0)), Outcome::Ignored);
        assert_eq!(c.classify(&Ok(1)), Outcome::Success);
        assert_eq!(c.classify(&Err(())), Outcome::Failure);
    }
}
