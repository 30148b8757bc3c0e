//! Running plain async code under a policy.

use std::future::{poll_fn, Future};

use buttress_core::BoxError;
use tower_layer::Layer;
use tower_service::Service;

use super::{Generic, PolicyLayer};

impl PolicyLayer<Generic> {
    /// Runs `op` under the policy: the same layers, with the same shared
    /// state, as the services this layer wraps; a retry calls `op` again.
    /// Outside tower, for a database call, an SDK method or any async
    /// block.
    ///
    /// The error is a [`BoxError`]: `op`'s own error (downcast it back),
    /// or a buttress rejection ([`kind_of`](buttress_core::error::kind_of)
    /// names it). Needs a tokio runtime with time enabled (the timeouts
    /// and the retry's waits are tokio timers).
    ///
    /// ```
    /// use buttress::policy::Policy;
    /// use buttress::core::error::{kind_of, ErrorKind};
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use std::time::Duration;
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), buttress::BoxError> {
    /// let policy = Policy::database().build()?;
    ///
    /// // Fails twice, then answers: the preset's retry gets there.
    /// let calls = AtomicU32::new(0);
    /// let rows = policy
    ///     .execute(|| async {
    ///         match calls.fetch_add(1, Ordering::Relaxed) {
    ///             0 | 1 => Err("connection reset"),
    ///             _ => Ok(vec!["row"]),
    ///         }
    ///     })
    ///     .await?;
    /// assert_eq!(rows, ["row"]);
    /// assert_eq!(calls.load(Ordering::Relaxed), 3);
    ///
    /// // A call that hangs ends at the preset's per-attempt timeout,
    /// // attempt after attempt, and the total timeout ends the whole.
    /// let err = policy
    ///     .execute(|| async {
    ///         tokio::time::sleep(Duration::from_secs(3600)).await;
    ///         Ok::<_, std::io::Error>(())
    ///     })
    ///     .await
    ///     .unwrap_err();
    /// assert_eq!(kind_of(&*err), Some(ErrorKind::Timeout));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn execute<Op, Fut, T, E>(&self, op: Op) -> Result<T, BoxError>
    where
        Op: Fn() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Into<BoxError>,
    {
        let op = &op;
        let mut svc = self.layer(ServiceFn(op));
        poll_fn(|cx| svc.poll_ready(cx)).await?;
        svc.call(()).await
    }
}

/// `op` as a service of `()`: a reference, so it is `Copy` and the retry
/// can keep one for the next attempt without `Op: Clone`.
struct ServiceFn<'a, Op>(&'a Op);

impl<Op> Clone for ServiceFn<'_, Op> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<Op> Copy for ServiceFn<'_, Op> {}

impl<Op, Fut, T, E> Service<()> for ServiceFn<'_, Op>
where
    Op: Fn() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    type Response = T;
    type Error = E;
    type Future = Fut;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), E>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, (): ()) -> Fut {
        (self.0)()
    }
}
