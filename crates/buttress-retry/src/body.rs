//! Request bodies that a retry can send again.
//!
//! An `http::Request<B>` cannot be cloned when `B` is a stream, so the retry
//! layer buffers the body *while the first attempt sends it* (a tee) and
//! replays that buffer on the next attempt. `tee` wraps the original body
//! and returns the first attempt's [`ReplayBody`] together with a
//! `BodyReplay`, which the retry future keeps to make the body of each
//! further attempt with `BodyReplay::replay`.
//!
//! # Semantics
//!
//! - **Pass-through.** A body forwards the frames of `B` unchanged, one frame
//!   for one frame; data is turned into [`Bytes`] with [`Buf::copy_to_bytes`]
//!   (no copy when `B::Data` is already `Bytes`).
//! - **Bounded buffer.** While the data buffered so far stays `<= limit`
//!   bytes, every data chunk (and the trailers) is kept. The moment the total
//!   would exceed `limit`, the buffer is freed and the body is marked too
//!   large: from then on `BodyReplay::replay` returns
//!   `NotReplayable::TooLarge`, while the attempt in flight keeps streaming
//!   normally. The limit counts the data bytes of the whole body, across
//!   attempts, not per attempt; trailers are kept without counting against it
//!   (the protocol already bounds header sizes).
//! - **Known to be too large.** If `B::size_hint().upper()` is already
//!   `> limit` when `tee` is called, nothing is ever buffered and the body
//!   is not replayable from the start.
//! - **Empty body.** A body whose `is_end_stream()` is true at `tee` time is
//!   trivially replayable (as an empty body), whatever the limit.
//! - **Dropped early.** A body dropped before the end of the stream gives the
//!   unread rest of `B`, with what was buffered, back to the `BodyReplay`.
//!   The next replay sends the buffered chunks and then continues reading the
//!   rest from `B`, teeing it too (under the same limit) for further retries.
//! - **Finished.** As soon as a body has read `B` to its end (`B` returned
//!   `None`, or reported `is_end_stream()` after a data frame, or sent its
//!   trailers, which end a stream), the complete buffer is published: replays
//!   work even while that finished body object is still alive, as hyper may
//!   keep it for a while. A replay of a complete buffer takes no lock while it
//!   is polled and shares the chunks (reference-counted `Bytes`, no copy).
//! - **In use.** `BodyReplay::replay` returns `NotReplayable::InUse` when
//!   the previous body is alive and has not finished: it still holds the
//!   unread rest of `B`. Any number of successive replays work otherwise.
//! - **Same frames.** A replay yields exactly the buffered data frames (not
//!   coalesced: the same chunks as the original frames) and then the
//!   trailers, or, if the original was not fully read, the buffered frames
//!   and then the rest of `B`.
//! - **Errors.** An error from `B` is passed on, converted into a
//!   `BoxError`. The rest of `B` is then lost, so every later
//!   `BodyReplay::replay` returns `NotReplayable::InUse` (or
//!   `NotReplayable::TooLarge` if the body had already outgrown the limit).
//!   The erroring body ends after the error.
//! - **Hints.** `is_end_stream` and `size_hint` of a replay are exact when it
//!   replays a complete buffer; while the original was not fully read they are
//!   the remaining buffered bytes plus the hint of the rest of `B`.
//!
//! A body in flight keeps its state by value, so polling it takes no lock;
//! the shared state is locked only to start a replay, to publish a finished
//! buffer, to mark the body too large or failed, and when an unfinished body
//! is dropped.

use std::fmt;
use std::mem;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};

use buttress_core::BoxError;
use bytes::{Buf, Bytes};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

/// The body an attempt sends: the first attempt's tee of the original body,
/// or a replay of it for a retry.
///
/// It is an ordinary [`http_body::Body`] of [`Bytes`]; the retry layer hands
/// it to the inner service as the request body.
///
/// ```
/// use bytes::Bytes;
/// use buttress_retry::ReplayBody;
/// use http_body::Body;
///
/// // A service behind the retry layer sees the exact length of a replayed body.
/// fn content_length<B>(req: &http::Request<ReplayBody<B>>) -> Option<u64>
/// where
///     B: Body + Unpin,
///     B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
/// {
///     req.body().size_hint().exact()
/// }
///
/// fn is_a_body<T: Body<Data = Bytes> + Send + Sync + Unpin + 'static>() {}
/// is_a_body::<ReplayBody<http_body_util::Full<Bytes>>>();
/// # let _ = content_length::<http_body_util::Full<Bytes>>;
/// ```
pub struct ReplayBody<B> {
    shared: Arc<Shared<B>>,
    // A mutex only so that the body is `Sync` without `B: Sync`: polling goes
    // through `get_mut`, which takes no lock; `is_end_stream` and `size_hint`
    // only get `&self` and lock it for a moment.
    mode: Mutex<Mode<B>>,
}

// `B` is only ever polled through `Pin::new`, which needs `B: Unpin` (a bound
// of the `Body` impl), so no pinned projection into `B` exists.
impl<B> Unpin for ReplayBody<B> {}

/// Kept by the retry future to make the body of the next attempt.
pub(crate) struct BodyReplay<B> {
    shared: Arc<Shared<B>>,
}

/// Why [`BodyReplay::replay`] could not make a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotReplayable {
    /// More than `limit` bytes: the body was sent once and not kept.
    TooLarge,
    /// The previous attempt still holds the unread rest of the body (its
    /// `ReplayBody` is alive and has not reached the end of the stream), or
    /// the body failed with an error and its rest is lost.
    InUse,
}

/// Wraps `body` for the first attempt, buffering at most `limit` bytes of it.
pub(crate) fn tee<B: Body + Unpin>(body: B, limit: usize) -> (ReplayBody<B>, BodyReplay<B>) {
    let (slot, mode) = if body.is_end_stream() {
        let empty = Arc::new(Buffered::default());
        (Slot::Complete(Arc::clone(&empty)), Mode::replay(empty))
    } else if body
        .size_hint()
        .upper()
        .is_some_and(|upper| upper > to_u64(limit))
    {
        (Slot::TooLarge, Mode::Pass { rest: body })
    } else {
        let kept = Kept {
            chunks: Vec::new(),
            len: 0,
            rest: body,
        };
        (Slot::Held, Mode::tee(kept))
    };
    let lost = if matches!(slot, Slot::TooLarge) {
        LOST_TOO_LARGE
    } else {
        LOST_NONE
    };
    let shared = Arc::new(Shared {
        limit,
        slot: Mutex::new(slot),
        lost: AtomicU8::new(lost),
    });
    let first = ReplayBody::new(Arc::clone(&shared), mode);
    (first, BodyReplay { shared })
}

impl<B: Body + Unpin> BodyReplay<B> {
    /// A body for the next attempt, or why none can be made.
    pub(crate) fn replay(&self) -> Result<ReplayBody<B>, NotReplayable> {
        let mut slot = lock(&self.shared.slot);
        let mode = match mem::replace(&mut *slot, Slot::Held) {
            Slot::Idle(kept) => Mode::tee(kept),
            other => {
                let mode = match &other {
                    Slot::Complete(buffered) => Ok(Mode::replay(Arc::clone(buffered))),
                    Slot::TooLarge => Err(NotReplayable::TooLarge),
                    Slot::Held | Slot::Failed | Slot::Idle(_) => Err(NotReplayable::InUse),
                };
                *slot = other;
                mode?
            }
        };
        drop(slot);
        Ok(ReplayBody::new(Arc::clone(&self.shared), mode))
    }
}

impl<B> BodyReplay<B> {
    /// Why no replay can ever be made, without taking the lock: the body
    /// outgrew the limit, or it failed and its rest is lost. `None` does
    /// not promise a replay: the previous attempt may still hold the body.
    #[inline]
    pub(crate) fn lost(&self) -> Option<NotReplayable> {
        match self.shared.lost.load(Ordering::Acquire) {
            LOST_NONE => None,
            LOST_TOO_LARGE => Some(NotReplayable::TooLarge),
            _ => Some(NotReplayable::InUse),
        }
    }
}

impl<B> fmt::Debug for BodyReplay<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodyReplay")
            .field("limit", &self.shared.limit)
            .field("state", &*lock(&self.shared.slot))
            .finish()
    }
}

/// What the retry future and the bodies share.
struct Shared<B> {
    limit: usize,
    slot: Mutex<Slot<B>>,
    /// Set (once, for good) when `slot` becomes `TooLarge` or `Failed`, so
    /// that the retry layer can tell that a request cannot be sent again
    /// without taking the lock on every call.
    lost: AtomicU8,
}

const LOST_NONE: u8 = 0;
const LOST_TOO_LARGE: u8 = 1;
const LOST_FAILED: u8 = 2;

impl<B> Shared<B> {
    fn set(&self, new: Slot<B>) {
        // The old state is dropped after the guard, outside the lock.
        let old = mem::replace(&mut *lock(&self.slot), new);
        drop(old);
    }
}

/// Where the body stands, as seen by the next replay.
enum Slot<B> {
    /// No live body holds the rest of `B`: the next replay takes it.
    Idle(Kept<B>),
    /// A live body holds the rest of `B` and has not finished.
    Held,
    /// `B` was read to its end and all of it is buffered.
    Complete(Arc<Buffered>),
    /// `B` outgrew the limit: it was not kept.
    TooLarge,
    /// `B` returned an error: its rest is lost.
    Failed,
}

/// A body not yet read to its end: the data buffered so far and the unread
/// rest.
struct Kept<B> {
    chunks: Vec<Bytes>,
    /// Total length of `chunks`.
    len: usize,
    rest: B,
}

/// A body read to its end.
#[derive(Default)]
struct Buffered {
    chunks: Vec<Bytes>,
    /// Total length of `chunks`.
    len: usize,
    trailers: Option<HeaderMap>,
}

/// What a live body does.
enum Mode<B> {
    /// Sends the buffered chunks from `pos` on, then reads the rest of `B`,
    /// buffering it. `sent` counts the data bytes sent so far.
    Tee {
        kept: Kept<B>,
        pos: usize,
        sent: usize,
    },
    /// Sends a complete buffer.
    Replay {
        buffered: Arc<Buffered>,
        pos: usize,
        sent: usize,
        trailers_sent: bool,
    },
    /// Over the limit: streams the rest of `B` without keeping it.
    Pass { rest: B },
    /// Read to the end, or failed.
    Done,
}

impl<B> Mode<B> {
    fn tee(kept: Kept<B>) -> Self {
        Mode::Tee {
            kept,
            pos: 0,
            sent: 0,
        }
    }

    fn replay(buffered: Arc<Buffered>) -> Self {
        Mode::Replay {
            buffered,
            pos: 0,
            sent: 0,
            trailers_sent: false,
        }
    }
}

impl<B> ReplayBody<B> {
    fn new(shared: Arc<Shared<B>>, mode: Mode<B>) -> Self {
        ReplayBody {
            shared,
            mode: Mutex::new(mode),
        }
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let mode = this.mode.get_mut().unwrap_or_else(PoisonError::into_inner);
        match mode {
            Mode::Replay {
                buffered,
                pos,
                sent,
                trailers_sent,
            } => {
                if let Some(chunk) = buffered.chunks.get(*pos) {
                    *pos += 1;
                    *sent += chunk.len();
                    return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
                }
                match &buffered.trailers {
                    Some(trailers) if !*trailers_sent => {
                        *trailers_sent = true;
                        Poll::Ready(Some(Ok(Frame::trailers(trailers.clone()))))
                    }
                    _ => Poll::Ready(None),
                }
            }
            Mode::Tee { kept, pos, sent } => {
                if let Some(chunk) = kept.chunks.get(*pos) {
                    *pos += 1;
                    *sent += chunk.len();
                    return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
                }
                poll_rest(&this.shared, mode, cx)
            }
            Mode::Pass { rest } => {
                let frame = ready!(Pin::new(rest).poll_frame(cx));
                Poll::Ready(frame.map(|frame| {
                    frame
                        .map(|frame| {
                            frame.map_data(|mut data| data.copy_to_bytes(data.remaining()))
                        })
                        .map_err(Into::into)
                }))
            }
            Mode::Done => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &*lock(&self.mode) {
            Mode::Tee { kept, pos, .. } => *pos >= kept.chunks.len() && kept.rest.is_end_stream(),
            Mode::Replay {
                buffered,
                pos,
                trailers_sent,
                ..
            } => *pos >= buffered.chunks.len() && (*trailers_sent || buffered.trailers.is_none()),
            Mode::Pass { rest } => rest.is_end_stream(),
            Mode::Done => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &*lock(&self.mode) {
            Mode::Tee { kept, sent, .. } => {
                let buffered = to_u64(kept.len.saturating_sub(*sent));
                let rest = kept.rest.size_hint();
                let mut hint = SizeHint::new();
                // Lower first: `set_upper` requires `upper >= lower`, which
                // holds because the rest's hint has `upper >= lower` and the
                // upper sum is only kept when it does not overflow.
                hint.set_lower(rest.lower().saturating_add(buffered));
                if let Some(upper) = rest.upper().and_then(|upper| upper.checked_add(buffered)) {
                    hint.set_upper(upper);
                }
                hint
            }
            Mode::Replay { buffered, sent, .. } => {
                SizeHint::with_exact(to_u64(buffered.len.saturating_sub(*sent)))
            }
            Mode::Pass { rest } => rest.size_hint(),
            Mode::Done => SizeHint::with_exact(0),
        }
    }
}

/// Reads the next frame of the rest of `B` for a body in `Mode::Tee` whose
/// buffered chunks have all been sent.
fn poll_rest<B>(
    shared: &Shared<B>,
    mode: &mut Mode<B>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    loop {
        let Mode::Tee { kept, pos, sent } = mode else {
            return Poll::Ready(None);
        };
        let frame = match ready!(Pin::new(&mut kept.rest).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            None => {
                finish(shared, mode, None);
                return Poll::Ready(None);
            }
            Some(Err(err)) => {
                *mode = Mode::Done;
                shared.set(Slot::Failed);
                shared.lost.store(LOST_FAILED, Ordering::Release);
                return Poll::Ready(Some(Err(err.into())));
            }
        };
        let frame = match frame.into_data() {
            Ok(mut data) => data.copy_to_bytes(data.remaining()),
            Err(frame) => match frame.into_trailers() {
                Ok(trailers) => {
                    // Trailers end a stream: hyper may not poll again after
                    // them, so the buffer is published now.
                    finish(shared, mode, Some(trailers.clone()));
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                // http-body 1 has no other kind of frame; should one appear,
                // it carries nothing a request body can send.
                Err(_) => continue,
            },
        };
        match kept
            .len
            .checked_add(frame.len())
            .filter(|&len| len <= shared.limit)
        {
            Some(len) => {
                kept.len = len;
                kept.chunks.push(frame.clone());
                *pos += 1;
                *sent += frame.len();
                // hyper stops polling once the body reports its end, so the
                // buffer must be complete without waiting for `None`.
                if kept.rest.is_end_stream() {
                    finish(shared, mode, None);
                }
            }
            None => {
                tracing::debug!(
                    limit = shared.limit,
                    "request body outgrew the replay buffer; it cannot be retried"
                );
                shared.set(Slot::TooLarge);
                shared.lost.store(LOST_TOO_LARGE, Ordering::Release);
                if let Mode::Tee { kept, .. } = mem::replace(mode, Mode::Done) {
                    // Dropping the chunks here frees the buffer at once.
                    *mode = Mode::Pass { rest: kept.rest };
                }
            }
        }
        return Poll::Ready(Some(Ok(Frame::data(frame))));
    }
}

/// Publishes the complete buffer of a body in `Mode::Tee` that read `B` to
/// its end.
fn finish<B>(shared: &Shared<B>, mode: &mut Mode<B>, trailers: Option<HeaderMap>) {
    if let Mode::Tee { kept, .. } = mem::replace(mode, Mode::Done) {
        let buffered = Buffered {
            chunks: kept.chunks,
            len: kept.len,
            trailers,
        };
        shared.set(Slot::Complete(Arc::new(buffered)));
    }
}

impl<B> Drop for ReplayBody<B> {
    fn drop(&mut self) {
        let mode = self.mode.get_mut().unwrap_or_else(PoisonError::into_inner);
        if let Mode::Tee { kept, .. } = mem::replace(mode, Mode::Done) {
            // The next replay sends what was buffered and reads on from here.
            self.shared.set(Slot::Idle(kept));
        }
    }
}

impl<B> fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayBody")
            .field("limit", &self.shared.limit)
            .field("mode", &*lock(&self.mode))
            .finish()
    }
}

impl<B> fmt::Debug for Mode<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mode::Tee { kept, pos, sent } => f
                .debug_struct("Tee")
                .field("kept", kept)
                .field("pos", pos)
                .field("sent", sent)
                .finish(),
            Mode::Replay {
                buffered,
                pos,
                sent,
                trailers_sent,
            } => f
                .debug_struct("Replay")
                .field("buffered", buffered)
                .field("pos", pos)
                .field("sent", sent)
                .field("trailers_sent", trailers_sent)
                .finish(),
            Mode::Pass { .. } => f.write_str("Pass"),
            Mode::Done => f.write_str("Done"),
        }
    }
}

impl<B> fmt::Debug for Slot<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Slot::Idle(kept) => f.debug_tuple("Idle").field(kept).finish(),
            Slot::Held => f.write_str("Held"),
            Slot::Complete(buffered) => f.debug_tuple("Complete").field(buffered).finish(),
            Slot::TooLarge => f.write_str("TooLarge"),
            Slot::Failed => f.write_str("Failed"),
        }
    }
}

impl<B> fmt::Debug for Kept<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kept")
            .field("chunks", &self.chunks.len())
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Buffered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Buffered")
            .field("chunks", &self.chunks.len())
            .field("len", &self.len)
            .field("trailers", &self.trailers.is_some())
            .finish()
    }
}

/// Locks `mutex`, recovering it if a panic poisoned it: every section under
/// these locks leaves the state consistent.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn to_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::VecDeque;

    use http::HeaderValue;
    use http_body_util::BodyExt;
    use proptest::prelude::*;

    /// A hand-made body: queued frames, each optionally preceded by one
    /// `Pending` (with a self-wake), and an optional error in the queue.
    struct TestBody {
        frames: VecDeque<Result<Frame<VecDeque<u8>>, &'static str>>,
        pending: bool,
        pending_given: bool,
        exact_hint: bool,
        report_end: bool,
    }

    impl TestBody {
        fn new(chunks: &[&[u8]]) -> Self {
            TestBody {
                frames: chunks
                    .iter()
                    .map(|chunk| Ok(Frame::data(chunk.iter().copied().collect())))
                    .collect(),
                pending: false,
                pending_given: false,
                exact_hint: false,
                report_end: true,
            }
        }

        fn trailers(mut self, trailers: HeaderMap) -> Self {
            self.frames.push_back(Ok(Frame::trailers(trailers)));
            self
        }

        fn error(mut self, message: &'static str) -> Self {
            self.frames.push_back(Err(message));
            self
        }

        /// Returns `Pending` once before each frame.
        fn pending(mut self) -> Self {
            self.pending = true;
            self
        }

        /// Reports the exact length of the data left.
        fn exact(mut self) -> Self {
            self.exact_hint = true;
            self
        }

        /// Never reports its end: only `None` tells it.
        fn silent_end(mut self) -> Self {
            self.report_end = false;
            self
        }

        fn data_left(&self) -> u64 {
            self.frames
                .iter()
                .filter_map(|frame| frame.as_ref().ok()?.data_ref())
                .map(|data| data.len() as u64)
                .sum()
        }
    }

    impl Body for TestBody {
        type Data = VecDeque<u8>;
        type Error = &'static str;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
            if self.pending && !self.pending_given {
                self.pending_given = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.pending_given = false;
            Poll::Ready(self.frames.pop_front())
        }

        fn is_end_stream(&self) -> bool {
            self.report_end && self.frames.is_empty()
        }

        fn size_hint(&self) -> SizeHint {
            if self.exact_hint {
                SizeHint::with_exact(self.data_left())
            } else {
                SizeHint::default()
            }
        }
    }

    fn trailers() -> HeaderMap {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers
    }

    /// What a body sent, frame by frame.
    #[derive(Debug, PartialEq)]
    enum Sent {
        Data(Bytes),
        Trailers(HeaderMap),
    }

    fn data(chunk: &'static [u8]) -> Sent {
        Sent::Data(Bytes::from_static(chunk))
    }

    /// Reads `body` to its end (or at most `max` frames), frame by frame.
    async fn frames(body: &mut ReplayBody<TestBody>, max: usize) -> Vec<Sent> {
        let mut sent = Vec::new();
        while sent.len() < max {
            match body.frame().await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => sent.push(Sent::Data(data)),
                    Err(frame) => sent.extend(frame.into_trailers().ok().map(Sent::Trailers)),
                },
                Some(Err(err)) => panic!("unexpected error: {err}"),
                None => break,
            }
        }
        sent
    }

    async fn all_frames(mut body: ReplayBody<TestBody>) -> Vec<Sent> {
        frames(&mut body, usize::MAX).await
    }

    async fn collect(body: ReplayBody<TestBody>) -> (Bytes, Option<HeaderMap>) {
        let collected = body.collect().await.expect("no error");
        let trailers = collected.trailers().cloned();
        (collected.to_bytes(), trailers)
    }

    fn hint(body: &impl Body) -> (u64, Option<u64>) {
        let hint = body.size_hint();
        (hint.lower(), hint.upper())
    }

    #[tokio::test]
    async fn first_attempt_streams_the_body_unchanged() {
        let body = TestBody::new(&[b"hello", b" ", b"world"])
            .trailers(trailers())
            .pending()
            .exact();
        let (first, _replay) = tee(body, 1024);
        assert_eq!(hint(&first), (11, Some(11)));
        assert!(!first.is_end_stream());

        assert_eq!(
            all_frames(first).await,
            [
                data(b"hello"),
                data(b" "),
                data(b"world"),
                Sent::Trailers(trailers())
            ]
        );
    }

    #[tokio::test]
    async fn replay_after_full_read_yields_the_same_bytes_and_trailers() {
        let body = TestBody::new(&[b"ab", b"cd", b"e"])
            .trailers(trailers())
            .pending();
        let (first, replay) = tee(body, 5);
        let original = all_frames(first).await;

        let again = all_frames(replay.replay().expect("replayable")).await;
        assert_eq!(again, original);
        assert_eq!(
            again,
            [
                data(b"ab"),
                data(b"cd"),
                data(b"e"),
                Sent::Trailers(trailers())
            ]
        );
        let (bytes, trailers_again) = collect(replay.replay().expect("replayable")).await;
        assert_eq!(bytes, Bytes::from_static(b"abcde"));
        assert_eq!(trailers_again, Some(trailers()));
    }

    #[tokio::test]
    async fn body_over_the_limit_is_sent_once_and_not_replayable() {
        let body = TestBody::new(&[b"1234", b"5678", b"9abc"])
            .trailers(trailers())
            .pending();
        let (mut first, replay) = tee(body, 6);

        assert_eq!(frames(&mut first, 1).await, [data(b"1234")]);
        assert_eq!(replay.replay().err(), Some(NotReplayable::InUse));
        // The second chunk takes the total to 8 > 6: the first attempt goes
        // on, and replays are refused at once, while it is still alive.
        assert_eq!(frames(&mut first, 1).await, [data(b"5678")]);
        assert_eq!(replay.replay().err(), Some(NotReplayable::TooLarge));
        assert_eq!(
            frames(&mut first, usize::MAX).await,
            [data(b"9abc"), Sent::Trailers(trailers())]
        );
        drop(first);
        assert_eq!(replay.replay().err(), Some(NotReplayable::TooLarge));
    }

    #[tokio::test]
    async fn size_hint_over_the_limit_buffers_nothing() {
        let body = TestBody::new(&[b"12345", b"67890", b"ab"]).exact();
        let (first, replay) = tee(body, 11);

        assert_eq!(replay.replay().err(), Some(NotReplayable::TooLarge));
        assert!(matches!(*lock(&first.mode), Mode::Pass { .. }));
        assert_eq!(hint(&first), (12, Some(12)));
        let (bytes, _) = collect(first).await;
        assert_eq!(bytes, Bytes::from_static(b"1234567890ab"));
        assert_eq!(replay.replay().err(), Some(NotReplayable::TooLarge));
    }

    #[tokio::test]
    async fn body_exactly_at_the_limit_is_replayable() {
        let body = TestBody::new(&[b"12345", b"67890"]).exact();
        let (first, replay) = tee(body, 10);
        collect(first).await;
        let (bytes, _) = collect(replay.replay().expect("replayable")).await;
        assert_eq!(bytes, Bytes::from_static(b"1234567890"));
    }

    #[tokio::test]
    async fn dropped_partially_read_body_is_resumed_by_the_replay() {
        let body = TestBody::new(&[b"a", b"bc", b"def", b"ghij"])
            .trailers(trailers())
            .pending();
        let (mut first, replay) = tee(body, 100);
        assert_eq!(frames(&mut first, 2).await, [data(b"a"), data(b"bc")]);
        drop(first);

        // The buffered prefix, then the rest read from the original body.
        let expected = [
            data(b"a"),
            data(b"bc"),
            data(b"def"),
            data(b"ghij"),
            Sent::Trailers(trailers()),
        ];
        assert_eq!(
            all_frames(replay.replay().expect("replayable")).await,
            expected
        );
        // The resumed part was teed too.
        assert!(matches!(&*lock(&replay.shared.slot), Slot::Complete(_)));
        assert_eq!(
            all_frames(replay.replay().expect("replayable")).await,
            expected
        );
    }

    #[tokio::test]
    async fn first_attempt_dropped_before_polling_is_replayed_whole() {
        let body = TestBody::new(&[b"abc", b"def"]);
        let (first, replay) = tee(body, 100);
        drop(first);
        let (bytes, trailers) = collect(replay.replay().expect("replayable")).await;
        assert_eq!(bytes, Bytes::from_static(b"abcdef"));
        assert_eq!(trailers, None);
    }

    #[tokio::test]
    async fn replay_while_previous_body_unfinished_is_in_use() {
        let body = TestBody::new(&[b"abc", b"def", b"ghi"]).pending();
        let (mut first, replay) = tee(body, 100);
        assert_eq!(replay.replay().err(), Some(NotReplayable::InUse));
        frames(&mut first, 1).await;
        assert_eq!(replay.replay().err(), Some(NotReplayable::InUse));
        drop(first);

        let mut second = replay.replay().expect("replayable");
        assert_eq!(replay.replay().err(), Some(NotReplayable::InUse));
        // Still in use while it replays the buffer, before reading on.
        assert_eq!(frames(&mut second, 1).await, [data(b"abc")]);
        assert_eq!(replay.replay().err(), Some(NotReplayable::InUse));
        drop(second);

        let (bytes, _) = collect(replay.replay().expect("replayable")).await;
        assert_eq!(bytes, Bytes::from_static(b"abcdefghi"));
    }

    #[tokio::test]
    async fn finished_body_still_alive_can_be_replayed() {
        // The body reports its end after the last data frame: no `None` is
        // ever polled, as with hyper.
        let (mut first, replay) = tee(TestBody::new(&[b"abc", b"def"]), 100);
        frames(&mut first, 2).await;
        assert!(first.is_end_stream());
        let (bytes, _) = collect(replay.replay().expect("replayable")).await;
        assert_eq!(bytes, Bytes::from_static(b"abcdef"));

        // Trailers end the stream.
        let body = TestBody::new(&[b"abc"]).trailers(trailers()).silent_end();
        let (mut first, replay) = tee(body, 100);
        frames(&mut first, 2).await;
        let (bytes, trailers_again) = collect(replay.replay().expect("replayable")).await;
        assert_eq!(bytes, Bytes::from_static(b"abc"));
        assert_eq!(trailers_again, Some(trailers()));

        // A body that never reports its end is finished by `None`.
        let (mut first, replay) = tee(TestBody::new(&[b"abc"]).silent_end(), 100);
        frames(&mut first, 1).await;
        assert!(!first.is_end_stream());
        assert_eq!(replay.replay().err(), Some(NotReplayable::InUse));
        assert!(first.frame().await.is_none());
        assert!(first.is_end_stream());
        let (bytes, _) = collect(replay.replay().expect("replayable")).await;
        assert_eq!(bytes, Bytes::from_static(b"abc"));
        drop(first);
    }

    #[tokio::test]
    async fn three_successive_replays() {
        let body = TestBody::new(&[b"one", b"two", b"three", b"four"])
            .trailers(trailers())
            .pending()
            .silent_end();
        let expected = [
            data(b"one"),
            data(b"two"),
            data(b"three"),
            data(b"four"),
            Sent::Trailers(trailers()),
        ];
        let (mut first, replay) = tee(body, 15);
        assert_eq!(frames(&mut first, 1).await, expected[..1]);
        drop(first);

        let mut second = replay.replay().expect("second attempt");
        assert_eq!(frames(&mut second, 3).await, expected[..3]);
        drop(second);

        let third = replay.replay().expect("third attempt");
        assert_eq!(all_frames(third).await, expected);
        let fourth = replay.replay().expect("fourth attempt");
        assert_eq!(all_frames(fourth).await, expected);
        let fifth = replay.replay().expect("fifth attempt");
        assert_eq!(all_frames(fifth).await, expected);
    }

    #[tokio::test]
    async fn limit_counts_the_whole_body_across_attempts() {
        let body = TestBody::new(&[b"1234", b"5678", b"9abc"]).pending();
        let (mut first, replay) = tee(body, 10);
        assert_eq!(frames(&mut first, 2).await, [data(b"1234"), data(b"5678")]);
        drop(first);

        // 8 bytes are buffered: the next 4, read by the replay, make 12 > 10.
        let mut second = replay.replay().expect("replayable so far");
        assert_eq!(frames(&mut second, 2).await, [data(b"1234"), data(b"5678")]);
        assert_eq!(replay.replay().err(), Some(NotReplayable::InUse));
        assert_eq!(frames(&mut second, usize::MAX).await, [data(b"9abc")]);
        assert_eq!(replay.replay().err(), Some(NotReplayable::TooLarge));
        drop(second);
        assert_eq!(replay.replay().err(), Some(NotReplayable::TooLarge));
    }

    #[tokio::test]
    async fn empty_body_is_replayable() {
        // Known to be empty at `tee` time, even with a zero limit.
        let (first, replay) = tee(TestBody::new(&[]), 0);
        assert!(first.is_end_stream());
        assert_eq!(hint(&first), (0, Some(0)));
        let second = replay
            .replay()
            .expect("replayable while the first is alive");
        assert!(second.is_end_stream());
        assert_eq!(all_frames(first).await, []);
        assert_eq!(all_frames(second).await, []);

        // Found empty only when read.
        let (first, replay) = tee(TestBody::new(&[]).silent_end(), 0);
        assert!(!first.is_end_stream());
        assert_eq!(all_frames(first).await, []);
        let second = replay.replay().expect("replayable");
        assert!(second.is_end_stream());
        assert_eq!(all_frames(second).await, []);
    }

    #[tokio::test]
    async fn inner_error_is_passed_on() {
        let body = TestBody::new(&[b"abc"]).error("boom").pending();
        let (mut first, replay) = tee(body, 100);
        assert_eq!(frames(&mut first, 1).await, [data(b"abc")]);
        let err = first.frame().await.expect("a frame").expect_err("an error");
        assert_eq!(err.to_string(), "boom");
        assert!(first.frame().await.is_none());
        assert!(first.is_end_stream());
        assert_eq!(replay.replay().err(), Some(NotReplayable::InUse));
        drop(first);
        assert_eq!(replay.replay().err(), Some(NotReplayable::InUse));

        // Through `collect` too.
        let (first, replay) = tee(TestBody::new(&[b"abc"]).error("boom"), 100);
        let err = first.collect().await.expect_err("an error");
        assert_eq!(err.to_string(), "boom");
        assert_eq!(replay.replay().err(), Some(NotReplayable::InUse));
    }

    #[tokio::test]
    async fn inner_error_after_the_limit_keeps_too_large() {
        let body = TestBody::new(&[b"abcdef"]).error("boom");
        let (first, replay) = tee(body, 3);
        let err = first.collect().await.expect_err("an error");
        assert_eq!(err.to_string(), "boom");
        assert_eq!(replay.replay().err(), Some(NotReplayable::TooLarge));
    }

    #[tokio::test]
    async fn replays_of_a_complete_buffer_have_an_exact_size_hint() {
        let body = TestBody::new(&[b"abc", b"", b"defg"]).trailers(trailers());
        let (first, replay) = tee(body, 100);
        collect(first).await;

        let mut second = replay.replay().expect("replayable");
        assert_eq!(hint(&second), (7, Some(7)));
        assert!(!second.is_end_stream());
        frames(&mut second, 1).await;
        assert_eq!(hint(&second), (4, Some(4)));
        frames(&mut second, 2).await;
        assert_eq!(hint(&second), (0, Some(0)));
        // The trailers are still to come.
        assert!(!second.is_end_stream());
        frames(&mut second, 1).await;
        assert!(second.is_end_stream());
        assert!(second.frame().await.is_none());
    }

    #[tokio::test]
    async fn replays_of_a_partial_buffer_add_the_hint_of_the_rest() {
        let body = TestBody::new(&[b"abc", b"de", b"fghi"]).exact();
        let (mut first, replay) = tee(body, 100);
        frames(&mut first, 1).await;
        assert_eq!(hint(&first), (6, Some(6)));
        drop(first);

        let mut second = replay.replay().expect("replayable");
        assert_eq!(hint(&second), (9, Some(9)));
        frames(&mut second, 1).await;
        assert_eq!(hint(&second), (6, Some(6)));
        frames(&mut second, 1).await;
        assert_eq!(hint(&second), (4, Some(4)));
        frames(&mut second, 1).await;
        assert_eq!(hint(&second), (0, Some(0)));
        assert!(second.is_end_stream());

        // Without a hint from the rest, only the buffered bytes are known.
        let (mut first, replay) = tee(TestBody::new(&[b"abc", b"de"]), 100);
        frames(&mut first, 1).await;
        drop(first);
        let second = replay.replay().expect("replayable");
        assert_eq!(hint(&second), (3, None));
    }

    #[tokio::test]
    async fn buffer_is_freed_when_the_limit_is_exceeded() {
        let body = TestBody::new(&[b"abc", b"defgh", b"ij"]).pending();
        let (mut first, replay) = tee(body, 5);
        frames(&mut first, 1).await;
        assert!(matches!(&*lock(&first.mode), Mode::Tee { kept, .. } if kept.len == 3));
        frames(&mut first, 1).await;
        assert!(matches!(*lock(&first.mode), Mode::Pass { .. }));
        assert!(matches!(*lock(&replay.shared.slot), Slot::TooLarge));
        let (bytes, _) = collect(first).await;
        assert_eq!(bytes, Bytes::from_static(b"ij"));
    }

    #[tokio::test]
    async fn poisoned_state_is_recovered() {
        let (first, replay) = tee(TestBody::new(&[b"abc"]), 100);
        let shared = Arc::clone(&replay.shared);
        let poisoner = std::thread::spawn(move || {
            let _guard = shared.slot.lock();
            panic!("poisoning the shared state on purpose");
        });
        assert!(poisoner.join().is_err());
        assert!(replay.shared.slot.is_poisoned());

        collect(first).await;
        let (bytes, _) = collect(replay.replay().expect("replayable")).await;
        assert_eq!(bytes, Bytes::from_static(b"abc"));
        assert!(format!("{replay:?}").contains("Complete"));
    }

    #[test]
    fn debug_needs_no_debug_body() {
        // `TestBody` does not implement `Debug`.
        let (first, replay) = tee(TestBody::new(&[b"abc"]), 8);
        assert_eq!(
            format!("{first:?}"),
            "ReplayBody { limit: 8, mode: Tee { kept: Kept { chunks: 0, len: 0, .. }, pos: 0, sent: 0 } }"
        );
        assert_eq!(
            format!("{replay:?}"),
            "BodyReplay { limit: 8, state: Held }"
        );
    }

    #[test]
    fn bodies_are_send_sync_unpin_and_static() {
        // Send but neither Sync nor Unpin.
        struct Awkward {
            _not_sync: std::cell::Cell<u8>,
            _not_unpin: std::marker::PhantomPinned,
        }
        fn send_sync_unpin_static<T: Send + Sync + Unpin + 'static>() {}
        send_sync_unpin_static::<ReplayBody<Awkward>>();
        send_sync_unpin_static::<BodyReplay<Awkward>>();
        send_sync_unpin_static::<ReplayBody<TestBody>>();
    }

    proptest! {
        #[test]
        fn replay_yields_the_original_bytes_or_is_too_large(
            bytes in proptest::collection::vec(any::<u8>(), 0..=4096),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
            limit in 0usize..=5000,
            read_before_drop in 0usize..10,
            exact_hint in any::<bool>(),
            pending in any::<bool>(),
            silent_end in any::<bool>(),
        ) {
            let mut cuts: Vec<usize> = cuts.iter().map(|cut| cut.index(bytes.len() + 1)).collect();
            cuts.push(0);
            cuts.push(bytes.len());
            cuts.sort_unstable();
            let chunks: Vec<&[u8]> = cuts.windows(2).map(|w| &bytes[w[0]..w[1]]).collect();
            let mut body = TestBody::new(&chunks);
            body.exact_hint = exact_hint;
            body.pending = pending;
            body.report_end = !silent_end;
            let too_large = bytes.len() > limit;

            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("a runtime");
            runtime.block_on(async {
                let (mut first, replay) = tee(body, limit);
                let sent: Vec<u8> = frames(&mut first, read_before_drop)
                    .await
                    .into_iter()
                    .flat_map(|sent| match sent {
                        Sent::Data(data) => data.to_vec(),
                        Sent::Trailers(_) => Vec::new(),
                    })
                    .collect();
                prop_assert_eq!(&sent[..], &bytes[..sent.len()]);
                drop(first);

                match replay.replay() {
                    Err(err) => {
                        prop_assert!(too_large);
                        prop_assert_eq!(err, NotReplayable::TooLarge);
                    }
                    Ok(second) => {
                        // It may have to read on, and find the body too large
                        // only then: it still sends all of it.
                        let (got, _) = collect(second).await;
                        prop_assert_eq!(&got[..], &bytes[..]);
                        match replay.replay() {
                            Err(err) => {
                                prop_assert!(too_large);
                                prop_assert_eq!(err, NotReplayable::TooLarge);
                            }
                            Ok(third) => {
                                prop_assert!(!too_large);
                                prop_assert_eq!(third.size_hint().exact(), Some(bytes.len() as u64));
                                let (got, _) = collect(third).await;
                                prop_assert_eq!(&got[..], &bytes[..]);
                            }
                        }
                    }
                }
                Ok(())
            })?;
        }
    }
}
