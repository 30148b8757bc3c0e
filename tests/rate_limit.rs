//! The rate limiter end to end: a keyed limiter on the client IP behind one
//! trusted proxy in a real axum server on 127.0.0.1 (429s with
//! `Retry-After` and the IETF headers, forged forwarding chains, malformed
//! headers), and a global one in a real tonic server (`ResourceExhausted`
//! with pushback and the quota as metadata).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use buttress_core::grpc::ErrorToStatusLayer;
use buttress_core::key::{ClientIp, ForwardedHeader};
use buttress_core::response::ErrorToResponseLayer;
use buttress_integration_tests::{client, HttpClient};
use buttress_rate_limit::{KeyedRateLimitLayer, Rate, RateLimitEvent, RateLimitLayer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Endpoint, Server};
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower::ServiceBuilder;

/// An axum app served with its peer addresses on 127.0.0.1.
struct Served {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Served {
    async fn start(app: Router) -> Served {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .expect("server error");
        });
        Served { addr, task }
    }

    fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `rate` per client IP behind one trusted proxy (the peer, 127.0.0.1),
/// read from `header`, behind the error-to-response layer.
fn app(rate: Rate, header: ForwardedHeader, response_headers: bool) -> Router {
    let router = Router::new().route("/", get(|| async { "ok" }));
    let builder = KeyedRateLimitLayer::builder(ClientIp::new(1).header(header), rate)
        .name("per-client")
        .max_keys(100_000);
    if response_headers {
        let limit = builder.response_headers().build().expect("config");
        router.layer(
            ServiceBuilder::new()
                .layer(ErrorToResponseLayer::new())
                .layer(limit),
        )
    } else {
        let limit = builder.build().expect("config");
        router.layer(
            ServiceBuilder::new()
                .layer(ErrorToResponseLayer::new())
                .layer(limit),
        )
    }
}

/// What the tests look at in a response.
#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<String>,
    policy: Option<String>,
    ratelimit: Option<String>,
}

async fn get_with(client: &HttpClient, url: &str, headers: &[(&str, &[u8])]) -> Answer {
    let mut req = http::Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, http::HeaderValue::from_bytes(v).expect("header value"));
    }
    let res = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(req.body(String::new()).expect("request")),
    )
    .await
    .expect("an answer within 10 s")
    .expect("an answer");
    let header = |name: &str| {
        res.headers()
            .get(name)
            .map(|v| v.to_str().expect("ascii").to_owned())
    };
    Answer {
        status: res.status().as_u16(),
        retry_after: header("retry-after"),
        policy: header("ratelimit-policy"),
        ratelimit: header("ratelimit"),
    }
}

async fn from(client: &HttpClient, url: &str, xff: &str) -> Answer {
    get_with(client, url, &[("x-forwarded-for", xff.as_bytes())]).await
}

#[tokio::test]
async fn a_client_that_bursts_gets_429_with_retry_after_and_ratelimit_headers_others_do_not() {
    let server = Served::start(app(
        Rate::per_minute(3),
        ForwardedHeader::XForwardedFor,
        false,
    ))
    .await;
    let (client, url) = (client(), server.url());
    for _ in 0..3 {
        let a = from(&client, &url, "203.0.113.1").await;
        assert_eq!(a.status, 200);
        assert_eq!((a.policy, a.ratelimit), (None, None));
    }
    let a = from(&client, &url, "203.0.113.1").await;
    assert_eq!(a.status, 429);
    // One permit every 20 s, the next a little under 20 s away: rounded up.
    assert_eq!(a.retry_after.as_deref(), Some("20"));
    assert_eq!(a.policy.as_deref(), Some(r#""per-client";q=3;w=60"#));
    assert_eq!(a.ratelimit.as_deref(), Some(r#""per-client";r=0;t=20"#));
    // Another client is not limited.
    for _ in 0..3 {
        let b = from(&client, &url, "203.0.113.2").await;
        assert_eq!(b.status, 200);
        assert_eq!(b.retry_after, None);
    }
}

#[tokio::test]
async fn with_response_headers_every_200_carries_the_quota() {
    let server = Served::start(app(
        Rate::per_minute(3),
        ForwardedHeader::XForwardedFor,
        true,
    ))
    .await;
    let (client, url) = (client(), server.url());
    for (remaining, reset) in [(2, 20), (1, 40), (0, 60)] {
        let a = from(&client, &url, "203.0.113.1").await;
        assert_eq!(a.status, 200);
        assert_eq!(a.policy.as_deref(), Some(r#""per-client";q=3;w=60"#));
        assert_eq!(
            a.ratelimit,
            Some(format!(r#""per-client";r={remaining};t={reset}"#))
        );
    }
    let a = from(&client, &url, "203.0.113.1").await;
    assert_eq!(a.status, 429);
    assert_eq!(a.ratelimit.as_deref(), Some(r#""per-client";r=0;t=20"#));
}

#[tokio::test]
async fn a_forged_x_forwarded_for_cannot_pick_another_clients_bucket() {
    let server = Served::start(app(
        Rate::per_minute(3),
        ForwardedHeader::XForwardedFor,
        false,
    ))
    .await;
    let (client, url) = (client(), server.url());
    // The attacker (seen by the proxy as 198.51.100.7) writes the victim's
    // address on the left, changing it at each request.
    for i in 0..6 {
        let forged = format!("203.0.113.{}, 203.0.113.9, 198.51.100.7", i % 3 + 1);
        let a = from(&client, &url, &forged).await;
        assert_eq!(a.status, if i < 3 { 200 } else { 429 }, "request {i}");
    }
    // Every victim still has its whole burst.
    for victim in ["203.0.113.1", "203.0.113.2", "203.0.113.3", "203.0.113.9"] {
        for _ in 0..3 {
            assert_eq!(from(&client, &url, victim).await.status, 200, "{victim}");
        }
    }
    // The attacker cannot escape its own bucket by forging the left either.
    let a = from(&client, &url, "10.9.9.9, 198.51.100.7").await;
    assert_eq!(a.status, 429);
}

#[tokio::test]
async fn a_forged_forwarded_chain_cannot_pick_another_clients_bucket() {
    let server = Served::start(app(Rate::per_minute(2), ForwardedHeader::Forwarded, false)).await;
    let (client, url) = (client(), server.url());
    let fwd = |v: &str| -> Vec<u8> { v.as_bytes().to_vec() };
    for i in 0..4 {
        let forged = fwd(&format!(
            "for=203.0.113.{};proto=https, for=\"198.51.100.7:4711\"",
            i + 1
        ));
        let a = get_with(&client, &url, &[("forwarded", &forged)]).await;
        assert_eq!(a.status, if i < 2 { 200 } else { 429 }, "request {i}");
    }
    for victim in ["for=203.0.113.1", "for=\"[2001:db8::1]\""] {
        for _ in 0..2 {
            let a = get_with(&client, &url, &[("forwarded", &fwd(victim))]).await;
            assert_eq!(a.status, 200, "{victim}");
        }
    }
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A header value of pieces of forwarding syntax and random bytes that a
/// header may carry (visible ASCII, space, tab, obs-text).
fn junk(rng: &mut Rng) -> Vec<u8> {
    const PIECES: &[&str] = &[
        "for=",
        "For=",
        ",",
        ";",
        ", ",
        "\"",
        "[",
        "]",
        ":",
        "::",
        "1.2.3.4",
        "256.1.1.1",
        "2001:db8::1",
        "[2001:db8::1]:80",
        "unknown",
        "_hidden",
        "proto=http",
        "by=",
        "=",
        "127.0.0.1",
        "0",
        "65536",
        "\\",
        " ",
        "\t",
        "::ffff:1.2.3.4",
        "1.2.3.4:99999",
    ];
    let mut out = Vec::new();
    for _ in 0..rng.below(12) {
        match rng.below(4) {
            0 => out.push(0x21 + rng.below(0x5e) as u8),
            1 => out.push(0x80 + rng.below(0x80) as u8),
            _ => out.extend_from_slice(PIECES[rng.below(PIECES.len() as u64) as usize].as_bytes()),
        }
    }
    // A header value may not start or end with whitespace on the wire.
    while out.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
        out.remove(0);
    }
    while out.last().is_some_and(|b| *b == b' ' || *b == b'\t') {
        out.pop();
    }
    out
}

#[tokio::test]
async fn malformed_forwarding_headers_never_panic() {
    for header in [ForwardedHeader::XForwardedFor, ForwardedHeader::Forwarded] {
        let server = Served::start(app(Rate::per_second(100_000), header, false)).await;
        let (client, url) = (client(), server.url());
        let name = match header {
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::Forwarded => "forwarded",
        };
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for i in 0..300 {
            let value = junk(&mut rng);
            // Sometimes twice, sometimes both headers.
            let mut headers: Vec<(&str, &[u8])> = vec![(name, &value)];
            let other = junk(&mut rng);
            if i % 3 == 0 {
                headers.push((name, &other));
            }
            if i % 5 == 0 {
                headers.push(("x-forwarded-for", &other));
                headers.push(("forwarded", &other));
            }
            let a = get_with(&client, &url, &headers).await;
            assert_eq!(
                a.status,
                200,
                "{header:?} {:?}",
                String::from_utf8_lossy(&value)
            );
        }
        assert!(!server.task.is_finished(), "the server is still up");
    }
}

#[tokio::test]
async fn a_rate_limited_grpc_call_is_resource_exhausted_with_pushback_and_quota_metadata() {
    // The limiter counts rejections; admitted calls are counted from its
    // events.
    let permitted = Arc::new(AtomicU64::new(0));
    let counter = permitted.clone();
    let limit = RateLimitLayer::builder(Rate::per_minute(2))
        .name("grpc")
        .on_event(move |e: &RateLimitEvent| {
            if let RateLimitEvent::Permitted { .. } = e {
                counter.fetch_add(1, Relaxed);
            }
        })
        .build()
        .expect("config");
    let handle = limit.handle();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let stack = ServiceBuilder::new()
        .layer(ErrorToStatusLayer::new())
        .layer(limit)
        .into_inner();
    let server = tokio::spawn(
        Server::builder()
            .layer(stack)
            .add_service(health)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut client = HealthClient::new(channel);
    let check = |client: &mut HealthClient<_>| {
        let mut client = client.clone();
        async move {
            tokio::time::timeout(
                Duration::from_secs(10),
                client.check(HealthCheckRequest::default()),
            )
            .await
            .expect("an answer within 10 s")
        }
    };
    check(&mut client).await.expect("first call served");
    check(&mut client).await.expect("second call served");
    let status = check(&mut client).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(status.message(), "rate limit exceeded");
    let meta = |k: &str| {
        status
            .metadata()
            .get(k)
            .map(|v| v.to_str().expect("ascii").to_owned())
    };
    let pushback: u64 = meta("grpc-retry-pushback-ms")
        .expect("pushback")
        .parse()
        .expect("a number");
    // 30 s per permit, less the time the two calls took.
    assert!((20_000..=30_000).contains(&pushback), "{pushback} ms");
    assert_eq!(
        meta("ratelimit-policy").as_deref(),
        Some(r#""grpc";q=2;w=60"#)
    );
    assert_eq!(meta("ratelimit").as_deref(), Some(r#""grpc";r=0;t=30"#));
    assert_eq!(
        (permitted.load(Relaxed), handle.snapshot().rejected),
        (2, 1)
    );
    server.abort();
}
