//! Body faults read by a real hyper client over 127.0.0.1: an aborted
//! body and a truncated one both fail the client's body read; an
//! untouched body arrives whole.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use buttress_chaos::{ChaosLayer, FaultKind, HttpChaosLayer};
use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tower::ServiceBuilder;

/// A body fed by the test through a channel, so that the server has
/// flushed the head and the first chunk before the next one is asked for.
/// `len` is the declared length (`Content-Length`), if any.
struct ChannelBody {
    rx: mpsc::UnboundedReceiver<Bytes>,
    len: Option<u64>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }

    fn size_hint(&self) -> SizeHint {
        self.len
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

/// Serves one connection on 127.0.0.1 with `layer` over a handler whose
/// body comes from the returned sender, and returns the client's response.
async fn serve_one(
    layer: HttpChaosLayer,
    len: Option<u64>,
) -> (
    mpsc::UnboundedSender<Bytes>,
    Response<hyper::body::Incoming>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let rx = std::sync::Arc::new(std::sync::Mutex::new(Some(rx)));
    let svc =
        ServiceBuilder::new()
            .layer(layer)
            .service_fn(move |_: Request<hyper::body::Incoming>| {
                let rx = rx.lock().unwrap().take().expect("one request");
                async move { Ok::<_, Infallible>(Response::new(ChannelBody { rx, len })) }
            });
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        // The connection ends with an error when chaos cuts the body.
        let _ = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc))
            .await;
    });
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = Request::get("/")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    // The head is sent once the first chunk is there.
    tx.send(Bytes::from_static(b"first,")).unwrap();
    let res = sender.send_request(req).await.unwrap();
    (tx, res)
}

/// The client's body read failed because the connection ended before the
/// body did (hyper reports a body error caused by an `UnexpectedEof`).
fn assert_unexpected_eof(err: &hyper::Error) {
    let io = std::error::Error::source(err)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .unwrap_or_else(|| panic!("not an I/O cause: {err:?}"));
    assert_eq!(io.kind(), std::io::ErrorKind::UnexpectedEof, "{err:?}");
}

fn layer(abort: f64, truncate: f64) -> HttpChaosLayer {
    ChaosLayer::builder()
        .name("body")
        .abort_body_rate(abort)
        .truncate_body_rate(truncate)
        .body_fault_after(6)
        .enabled(true)
        .build_http()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_body_fails_the_clients_read_after_the_first_bytes() {
    let chaos = layer(1.0, 0.0);
    let (tx, res) = serve_one(chaos.clone(), None).await;
    assert_eq!(res.status(), 200);
    let mut body = res.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "first,");
    tx.send(Bytes::from_static(b"second")).unwrap();
    let err = loop {
        match body.frame().await {
            Some(Ok(_)) => continue,
            Some(Err(e)) => break e,
            None => panic!("the body ended cleanly"),
        }
    };
    assert_unexpected_eof(&err);
    assert_eq!(
        chaos.handle().snapshot().injected(FaultKind::AbortedBody),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_body_with_a_declared_length_fails_the_clients_read() {
    let chaos = layer(0.0, 1.0);
    let (tx, res) = serve_one(chaos.clone(), Some(12)).await;
    assert_eq!(res.headers()["content-length"], "12");
    let mut body = res.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "first,");
    tx.send(Bytes::from_static(b"second")).unwrap();
    let err = loop {
        match body.frame().await {
            Some(Ok(_)) => continue,
            Some(Err(e)) => break e,
            None => panic!("the body ended cleanly"),
        }
    };
    assert_unexpected_eof(&err);
    assert_eq!(
        chaos.handle().snapshot().injected(FaultKind::TruncatedBody),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untouched_body_arrives_whole() {
    let chaos = layer(0.0, 0.0);
    let (tx, res) = serve_one(chaos, Some(12)).await;
    tx.send(Bytes::from_static(b"second")).unwrap();
    drop(tx);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "first,second");
}
