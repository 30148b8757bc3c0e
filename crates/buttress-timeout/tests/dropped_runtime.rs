//! What a dropped runtime leaves behind after calls that armed timers.
//!
//! Alone in its binary: it counts the file descriptors of the process,
//! which tests running beside it would change.

#![cfg(target_os = "linux")]

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use buttress_timeout::TimeoutLayer;
use tower::{service_fn, Layer, ServiceExt};

/// Pending once (waking its task at once), then ready.
struct PendingOnce(bool);

impl Future for PendingOnce {
    type Output = Result<(), std::convert::Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if std::mem::replace(&mut self.0, true) {
            Poll::Ready(Ok(()))
        } else {
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn a_dropped_runtime_closes_its_file_descriptors_after_calls_that_armed_timers() {
    let svc = TimeoutLayer::new(Duration::from_secs(30))
        .unwrap()
        .layer(service_fn(|()| PendingOnce(false)));
    let short = TimeoutLayer::new(Duration::from_millis(1))
        .unwrap()
        .layer(service_fn(|()| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, std::convert::Infallible>(())
        }));
    // A first runtime, dropped before counting: with tokio's `signal`
    // feature (on when the workspace is built together), the first I/O
    // driver opens the process-wide signal pipe, which stays open for the
    // life of the process whatever the timers did.
    drop(
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
    );
    let before = open_fds();
    for flavor in ["current_thread", "multi_thread"] {
        let rt = match flavor {
            "current_thread" => tokio::runtime::Builder::new_current_thread(),
            _ => tokio::runtime::Builder::new_multi_thread(),
        }
        .enable_all()
        .build()
        .unwrap();
        assert!(open_fds() > before, "an I/O driver holds descriptors");
        rt.block_on(async {
            // Each call is pending once: its timer is armed on this thread.
            for _ in 0..100 {
                svc.clone().oneshot(()).await.unwrap();
            }
            assert!(short.clone().oneshot(()).await.is_err());
            // And on the workers, for the multi-thread runtime.
            let calls: Vec<_> = (0..100)
                .map(|_| tokio::spawn(svc.clone().oneshot(())))
                .collect();
            for call in calls {
                call.await.unwrap().unwrap();
            }
        });
        drop(rt);
        assert_eq!(open_fds(), before, "{flavor}: no timer kept the driver");
    }
}
