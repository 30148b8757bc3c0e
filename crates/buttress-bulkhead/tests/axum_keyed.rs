//! The `axum_keyed` example's server on loopback: with connect info each
//! client IP gets its own bulkhead; without it every request is rejected
//! with `KeyMissing` (a 500) and counted, never silently shared.

#[path = "../../../examples/axum_keyed.rs"]
#[allow(dead_code)]
mod example;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};

/// A GET from the source address `from`; the status and the body.
async fn get(server: SocketAddr, from: &str) -> (u16, String) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(server).await.unwrap();
    stream
        .write_all(b"GET /work HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await.unwrap();
    let status = raw[9..12].parse().unwrap();
    let body = raw.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_connect_info_each_client_ip_gets_its_own_bulkhead() {
    let bulkhead = example::per_client_bulkhead();
    let handle = bulkhead.handle();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = example::app(bulkhead, Duration::from_millis(600));
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    // Client A holds its only permit...
    let first = tokio::spawn(get(addr, "127.0.0.1"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ...so A's second call is rejected, while client B is not affected.
    let (again, b) = tokio::join!(get(addr, "127.0.0.1"), get(addr, "127.0.0.2"));
    assert_eq!(again.0, 503, "{}", again.1);
    assert!(
        again.1.contains("bulkhead `per-client` is full"),
        "{}",
        again.1
    );
    assert_eq!(b, (200, "done\n".to_owned()));
    assert_eq!(first.await.unwrap(), (200, "done\n".to_owned()));
    assert_eq!(handle.keys(), 2);
    assert_eq!(handle.missing_key(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_connect_info_requests_are_rejected_and_counted() {
    let bulkhead = example::per_client_bulkhead();
    let handle = bulkhead.handle();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = example::app(bulkhead, Duration::from_millis(10));
    // The mistake: plain serve, so no request carries its peer address.
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    for from in ["127.0.0.1", "127.0.0.2"] {
        let (status, body) = get(addr, from).await;
        assert_eq!(status, 500, "{body}");
        assert!(
            body.contains("no key for request in `per-client`"),
            "{body}"
        );
        assert!(
            body.contains("into_make_service_with_connect_info"),
            "{body}"
        );
    }
    assert_eq!(handle.missing_key(), 2);
    assert_eq!(handle.keys(), 0);
    let json = buttress_core::Component::snapshot(&handle);
    assert_eq!(json["missing_key"], 2);
}
