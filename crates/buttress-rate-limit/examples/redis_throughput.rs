//! Decisions per second of the Redis rate limiter over loopback, against a
//! redis-server of its own, with 2 calls and with 64 calls in flight; then
//! redis-benchmark's figures for an EVALSHA of the same script (and of a
//! trivial one) on the same server, for comparison.
//!
//! ```text
//! cargo run --release -p buttress-rate-limit --features redis --example redis_throughput [-- SECONDS]
//! ```
//!
//! Needs `redis-server` and `redis-benchmark` on PATH (`bash scripts/test.sh`
//! installs them).

use std::convert::Infallible;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use buttress_rate_limit::redis::{OutagePolicy, RedisRateLimitLayer};
use buttress_rate_limit::Rate;
use tower::{Layer, Service, ServiceExt};

/// The limiter's script, as the library sends it.
const SCRIPT: &str = include_str!("../src/redis/gcra.lua");

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server() -> (Server, u16) {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server on PATH (bash scripts/test.sh installs it)");
    let server = Server(child);
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    for _ in 0..250 {
        if let Ok(mut c) = client.get_connection() {
            if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                return (server, port);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("redis-server did not answer on port {port}");
}

async fn measure(url: &str, in_flight: usize, secs: u64) -> f64 {
    // A rate no run reaches: every call is admitted, each by one script run.
    let layer =
        RedisRateLimitLayer::builder_url(url, Rate::new(1_000_000_000, Duration::from_secs(1)))
            .name(format!("bench-{in_flight}"))
            .decision_timeout(Duration::from_secs(1))
            .outage(OutagePolicy::FailClosed)
            .build()
            .unwrap();
    let svc = layer.layer(tower::service_fn(|()| async { Ok::<_, Infallible>(()) }));
    // Connect and load the script first.
    svc.clone().oneshot(()).await.unwrap();
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for _ in 0..in_flight {
        let mut svc = svc.clone();
        let (done, failed) = (done.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                match svc.ready().await.unwrap().call(()).await {
                    Ok(()) => done.fetch_add(1, Relaxed),
                    Err(_) => failed.fetch_add(1, Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let s = layer.handle().snapshot();
    assert_eq!(s.redis_errors, 0, "Redis failed decisions: {s:?}");
    assert_eq!(failed.load(Relaxed), 0);
    done.load(Relaxed) as f64 / elapsed
}

fn benchmark(port: u16, args: &[&str]) {
    let p = port.to_string();
    let mut cmd = Command::new("redis-benchmark");
    cmd.args(["-p", &p, "-n", "200000"]).args(args);
    let shown: Vec<String> = std::iter::once("redis-benchmark".to_string())
        .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect();
    println!("$ {}", shown.join(" "));
    match cmd.output() {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            // -q prints progress lines ending in \r, then the figure.
            let last = text.rsplit(['\r', '\n']).find(|l| !l.trim().is_empty());
            println!("  {}", last.unwrap_or("(no output)").trim());
        }
        Err(e) => println!("  redis-benchmark did not run: {e}"),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let secs = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let (_server, port) = start_server();
    let url = format!("redis://127.0.0.1:{port}/");

    for in_flight in [2, 64] {
        let rate = measure(&url, in_flight, secs).await;
        println!(
            "RedisRateLimit, {in_flight:>2} calls in flight, {secs} s: {rate:>9.0} decisions/s"
        );
    }

    // The same script by its SHA-1, and a trivial one.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(SCRIPT)
        .query(&mut conn)
        .unwrap();
    let trivial: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg("return 1")
        .query(&mut conn)
        .unwrap();
    // cost x T = 1 ns, burst x T = 1 s, T = 1 ns: every run admits.
    let gcra = ["EVALSHA", &sha, "1", "bench:gcra", "0", "1", "1", "0", "1"];
    let noop = ["EVALSHA", &trivial, "0"];
    for (c, pipeline) in [("2", None), ("64", Some("16"))] {
        for script in [&gcra[..], &noop[..]] {
            let mut args = vec!["-q", "-c", c];
            if let Some(p) = pipeline {
                args.extend(["-P", p]);
            }
            args.extend_from_slice(script);
            benchmark(port, &args);
        }
    }
}
