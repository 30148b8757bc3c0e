//! Runs the whole demo briefly on 127.0.0.1 and checks that its numbers
//! are consistent, and that `/metrics`, scraped over HTTP during and after
//! the run, has the documented series with the values the report printed:
//! the fallback's answers, the cache's hits and stale answers, readiness
//! and the sagas' outcomes included.
//!
//! One test: the Prometheus recorder is global to the process.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Bytes;
use buttress_demo::{run_with, DemoConfig, Exposition, MetricsCounts, MetricsEndpoint};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// `GET http://{addr}/metrics` over HTTP, as Prometheus scrapes it: the
/// content type and the body.
async fn scrape(addr: SocketAddr) -> (String, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let uri = format!("http://{addr}/metrics").parse().unwrap();
    let res = client.get(uri).await.expect("/metrics answers");
    assert_eq!(res.status(), http::StatusCode::OK);
    let content_type = res.headers()[http::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (content_type, String::from_utf8(body.to_vec()).unwrap())
}

/// The value of the one sample of `name` with `labels`, as a count.
fn count(e: &Exposition, name: &str, labels: &[(&str, &str)]) -> u64 {
    let v = e
        .sum(name, labels)
        .unwrap_or_else(|| panic!("no {name}{labels:?}"));
    assert!(v >= 0.0 && v.fract() == 0.0, "{name}{labels:?} = {v}");
    v as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_short_run_sends_requests_and_its_counts_add_up() {
    let config = DemoConfig {
        duration: Duration::from_secs(3),
        concurrency: 8,
        print_table: false,
        compare: Duration::from_secs(1),
    };
    // The recorder is installed, and `/metrics` served, before the demo
    // builds its layers; the endpoint outlives the run.
    let endpoint = MetricsEndpoint::start().await.expect("/metrics starts");
    let addr = endpoint.addr();
    assert_eq!(endpoint.url(), format!("http://{addr}/metrics"));
    assert!(addr.ip().is_loopback());
    // A scrape in the middle of the load.
    let during = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        scrape(addr).await
    });
    let summary = tokio::time::timeout(Duration::from_secs(30), run_with(config, &endpoint))
        .await
        .expect("the demo stops by itself")
        .expect("the demo runs");
    let (content_type, during) = during.await.unwrap();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let during = Exposition::parse(&during).expect("/metrics is a valid exposition");
    let during = MetricsCounts::read(&during).expect("the layers' series are there");
    assert!(during.http_requests > 0, "{during:?}");

    let c = summary.counts;
    assert!(c.total > 0, "no request was made");
    assert_eq!(
        c.ok + c.fallback
            + c.rate_limited
            + c.upstream_errors
            + c.bad_gateway
            + c.shed
            + c.timeouts
            + c.other,
        c.total,
        "{c:?}"
    );
    assert!(c.ok > 0, "no request succeeded: {c:?}");
    assert!(summary.elapsed >= Duration::from_secs(3));

    // Every 503 is a bulkhead rejection or an open-circuit rejection, as
    // the gateway's `x-rejected-by` header says.
    assert_eq!(
        summary.shed_queue_full + summary.shed_wait_timed_out + summary.circuit_rejected,
        c.shed,
        "{summary:?}"
    );
    let phases = &summary.phases;
    assert_eq!(
        phases.iter().map(|p| p.circuit_rejected).sum::<u64>(),
        summary.circuit_rejected
    );
    // Each 503 is counted with its cause where every answer is counted (the
    // clients, by the gateway's `x-rejected-by` header), so the table's
    // `503` column is `full + wait + open` in every phase (and every row).
    for p in phases {
        let pc = &p.counts;
        assert_eq!(
            pc.shed_queue_full + pc.shed_wait_timed_out + pc.shed_circuit_open,
            pc.shed,
            "{p:?}"
        );
        assert_eq!(p.circuit_rejected, pc.shed_circuit_open, "{p:?}");
    }
    assert_eq!(c.shed_queue_full, summary.shed_queue_full, "{summary:?}");
    assert_eq!(
        c.shed_wait_timed_out, summary.shed_wait_timed_out,
        "{summary:?}"
    );
    assert_eq!(c.shed_circuit_open, summary.circuit_rejected, "{summary:?}");
    // Each forwarded call and retry reached the upstream.
    assert!(
        phases.iter().map(|p| p.upstream_calls).sum::<u64>() >= summary.forwarded,
        "{summary:?}"
    );
    assert_eq!(
        phases.iter().map(|p| p.circuit_opened).sum::<u64>(),
        summary.circuit_opened
    );
    assert!(
        summary.circuit_reopened <= summary.circuit_opened,
        "{summary:?}"
    );
    // The upstream sheds 5 to 20 % of its calls with 503: the gateway
    // retries some of them, and each retry is one more upstream call, within
    // the budget (20 % of the calls plus 5 a second over 10 s).
    assert!(summary.retries > 0, "no retry was made: {summary:?}");
    assert!(summary.retried_calls <= summary.retries, "{summary:?}");
    // A retried call ends once: answered, shed at every attempt, given up
    // (budget or deadline), or cut by the timeout.
    assert!(
        summary.retry_succeeded + summary.retry_exhausted <= summary.retried_calls,
        "{summary:?}"
    );
    assert!(summary.retries <= summary.forwarded / 5 + 50, "{summary:?}");
    assert_eq!(
        phases.iter().map(|p| p.retries).sum::<u64>(),
        summary.retries
    );
    // Every 502 is an upstream 503 that the retries did not turn around.
    assert_eq!(
        summary.retry_exhausted + summary.retry_budget_spent + summary.retry_deadline,
        c.bad_gateway,
        "{summary:?}"
    );
    // The rate limit: every 429 the clients saw is one rejection of the
    // per-client limit, all of them the bursting client's, each with a
    // Retry-After; the steady clients stay under their limit.
    assert!(c.rate_limited > 0, "no request was rate limited: {c:?}");
    assert_eq!(summary.rate_limited, c.rate_limited, "{summary:?}");
    assert_eq!(summary.clients.len(), 9, "{:?}", summary.clients);
    let burst = summary.clients.last().unwrap();
    assert_eq!(burst.name, "burst");
    assert_eq!(burst.rate_limited, c.rate_limited, "{burst:?}");
    assert!(burst.admitted > 0, "{burst:?}");
    assert_eq!(burst.retry_after, Some((1, 1)), "{burst:?}");
    for steady in &summary.clients[..8] {
        assert_eq!(steady.rate_limited, 0, "{steady:?}");
        assert!(steady.admitted > 0, "{steady:?}");
    }
    assert_eq!(
        summary
            .clients
            .iter()
            .map(|c| c.admitted + c.rate_limited)
            .sum::<u64>(),
        c.total
    );
    // Every answered request went through the limiter (a request without
    // an answer may or may not have reached it).
    let judged = summary.rate_limit_admitted + summary.rate_limited;
    assert!(
        (c.total - c.other..=c.total).contains(&judged),
        "{judged} {summary:?}"
    );
    assert_eq!(summary.registry["per-client"]["kind"], "keyed_rate_limit");
    assert_eq!(summary.registry["per-client"]["state"]["keys"], 9);
    assert_eq!(
        summary.registry["per-client"]["state"]["rejected"],
        summary.rate_limited
    );

    // The five layers are registered under their names.
    assert_eq!(summary.registry["gateway"]["kind"], "bulkhead");
    assert_eq!(summary.registry["upstream"]["kind"], "circuit_breaker");
    // The breaker decides in `poll_ready`: it also counts as not permitted
    // the requests it refused there that the rate limit above it then
    // answered 429 without calling it. Its refusals on `/` are the
    // fallback's answers; on `/hot`, a 503 or a stale answer.
    let not_permitted = summary.registry["upstream"]["state"]["not_permitted_calls"]
        .as_u64()
        .unwrap();
    let refused = summary.circuit_rejected + summary.fallback_used;
    assert!(
        (refused..=refused + summary.cache_stale + c.rate_limited).contains(&not_permitted),
        "{not_permitted} {summary:?}"
    );
    assert_eq!(summary.registry["upstream-fallback"]["kind"], "fallback");
    assert_eq!(summary.registry["hot"]["kind"], "cache");
    assert_eq!(summary.registry["order"]["kind"], "saga");
    assert_eq!(summary.registry["upstream-timeout"]["kind"], "timeout");
    assert_eq!(summary.registry["upstream-retry"]["kind"], "retry");
    assert_eq!(
        summary.registry["upstream-retry"]["state"]["retries"],
        summary.retries
    );
    assert_eq!(phases.len(), 3, "{phases:?}");

    // The comparison: the same clients, the upstream degraded, no buttress.
    let bare = summary.unprotected.as_ref().expect("the comparison ran");
    assert_eq!((bare.phase, bare.seconds), ("degraded", 1), "{bare:?}");
    let bc = &bare.counts;
    assert!(bc.total > 0, "{bare:?}");
    assert_eq!(
        bc.ok
            + bc.fallback
            + bc.rate_limited
            + bc.upstream_errors
            + bc.bad_gateway
            + bc.shed
            + bc.timeouts
            + bc.other,
        bc.total,
        "{bare:?}"
    );
    // Nothing rejects there: no 429, its 503s are the upstream's own,
    // untagged, and every request is one upstream call.
    assert_eq!(bc.rate_limited, 0, "{bare:?}");
    assert_eq!(
        bc.shed_queue_full + bc.shed_wait_timed_out + bc.shed_circuit_open,
        0,
        "{bare:?}"
    );
    assert_eq!(bare.upstream_calls, bc.total - bc.other, "{bare:?}");

    let report = summary.to_string();
    assert!(
        report.contains("without buttress: the same degraded upstream"),
        "{report}"
    );
    assert!(report.contains("what each pattern did"), "{report}");
    assert!(report.contains("  circuit    "), "{report}");
    assert!(report.contains("  retry      "), "{report}");
    assert!(report.contains("  rate limit "), "{report}");
    for line in [
        "  fallback   ",
        "  cache      ",
        "  health     ",
        "  saga       ",
    ] {
        assert!(report.contains(line), "{line} in\n{report}");
    }
    assert!(report.contains("Retry-After: 1"), "{report}");

    // `/metrics` after the run, over HTTP: the documented series, as the
    // exporter spells them (`.` becomes `_`, no suffix added).
    let (_, text) = scrape(addr).await;
    let e = Exposition::parse(&text).expect("/metrics is a valid exposition");
    for (name, kind) in [
        ("buttress_circuit_breaker_state", "gauge"),
        ("buttress_circuit_breaker_transitions_total", "counter"),
        ("buttress_circuit_breaker_calls_total", "counter"),
        ("buttress_bulkhead_calls_total", "counter"),
        ("buttress_bulkhead_available_permits", "gauge"),
        ("buttress_rate_limit_decisions_total", "counter"),
        ("buttress_retry_calls_total", "counter"),
        ("buttress_retry_attempts_total", "counter"),
        ("buttress_timeout_calls_total", "counter"),
        ("http_server_requests", "counter"),
        ("http_server_active_requests", "gauge"),
        ("buttress_fallback_calls_total", "counter"),
        ("buttress_cache_requests_total", "counter"),
        ("buttress_saga_sagas_total", "counter"),
        ("buttress_saga_steps_total", "counter"),
        ("buttress_health_status", "gauge"),
        ("buttress_health_ready", "gauge"),
    ] {
        assert_eq!(e.kind(name), Some(kind), "{name} in\n{text}");
        assert!(e.select(name, &[]).next().is_some(), "{name} in\n{text}");
    }
    assert!(
        e.select("http_server_request_duration_count", &[])
            .next()
            .is_some(),
        "{text}"
    );
    assert_eq!(
        count(
            &e,
            "http_server_requests",
            &[("name", "gateway"), ("http_route", "/healthz")]
        ),
        1,
        "the health check before the load"
    );

    // What the report printed is what was scraped. Nothing goes through
    // the protected gateway after the load, so the counters have not moved
    // since the report's last reading.
    let scraped = MetricsCounts::read(&e).unwrap();
    let m = summary.metrics;
    assert_eq!(scraped, m, "{text}");
    let rate_limited = count(
        &e,
        "buttress_rate_limit_decisions_total",
        &[("name", "per-client"), ("decision", "rejected")],
    );
    assert_eq!(summary.rate_limited, rate_limited);
    assert_eq!(c.rate_limited, rate_limited);
    assert_eq!(
        summary.rate_limit_admitted,
        count(
            &e,
            "buttress_rate_limit_decisions_total",
            &[
                ("name", "per-client"),
                ("decision", "permitted"),
                ("reason", "none")
            ],
        )
    );
    assert_eq!(
        summary.circuit_opened,
        count(
            &e,
            "buttress_circuit_breaker_transitions_total",
            &[("name", "upstream"), ("to", "open")],
        )
    );
    assert_eq!(
        summary.circuit_closed,
        count(
            &e,
            "buttress_circuit_breaker_transitions_total",
            &[("name", "upstream"), ("to", "closed")],
        )
    );
    let not_permitted = count(
        &e,
        "buttress_circuit_breaker_calls_total",
        &[("name", "upstream"), ("kind", "not_permitted")],
    );
    assert_eq!(
        summary.registry["upstream"]["state"]["not_permitted_calls"],
        not_permitted
    );
    let attempts = count(
        &e,
        "buttress_retry_attempts_total",
        &[("name", "upstream-retry")],
    );
    let calls = count(
        &e,
        "buttress_retry_calls_total",
        &[("name", "upstream-retry")],
    );
    assert_eq!(summary.retries, attempts - calls);
    assert_eq!(
        summary.retry_succeeded,
        count(
            &e,
            "buttress_retry_calls_total",
            &[
                ("name", "upstream-retry"),
                ("kind", "successful_with_retry")
            ],
        )
    );
    let timed_out = count(
        &e,
        "buttress_timeout_calls_total",
        &[("name", "upstream-timeout"), ("kind", "timed_out")],
    );
    assert_eq!(summary.upstream_calls_timed_out, timed_out);
    assert_eq!(
        summary.registry["upstream-timeout"]["state"]["timed_out"],
        timed_out
    );
    let bulkhead_rejected = count(
        &e,
        "buttress_bulkhead_calls_total",
        &[("name", "gateway"), ("kind", "rejected")],
    );
    assert_eq!(
        summary.registry["gateway"]["state"]["rejected"],
        bulkhead_rejected
    );
    // The bulkhead decides in `poll_ready`, as the breaker does: it also
    // refused requests that the rate limit above it then answered 429; and
    // the `/hot` misses it refused were answered stale.
    assert!(
        (summary.shed_bulkhead()..=summary.shed_bulkhead() + c.rate_limited + summary.cache_stale)
            .contains(&bulkhead_rejected),
        "{bulkhead_rejected} {summary:?}"
    );
    // Exactly one state of the breaker's gauge is at 1: the one printed.
    let on: Vec<_> = e
        .select("buttress_circuit_breaker_state", &[("name", "upstream")])
        .filter(|s| s.value == 1.0)
        .collect();
    assert_eq!(on.len(), 1, "{on:?}");
    assert_eq!(on[0].label("state"), Some(summary.circuit_state));
    // Every answered request went through the gateway's MetricsLayer, on
    // `/` or on `/hot`.
    let http = count(
        &e,
        "http_server_requests",
        &[("name", "gateway"), ("http_route", "/")],
    );
    let http_hot = count(
        &e,
        "http_server_requests",
        &[("name", "gateway"), ("http_route", "/hot")],
    );
    assert!(
        (c.total - c.other..=c.total).contains(&(http + http_hot)),
        "{http} {http_hot} {c:?}"
    );
    assert!(
        (c.hot - c.other.min(c.hot)..=c.hot).contains(&http_hot),
        "{http_hot} {c:?}"
    );

    // The fallback: every answer the clients saw marked `x-fallback` is
    // one `fallback_used`, and nothing else is.
    let fallback_used = count(
        &e,
        "buttress_fallback_calls_total",
        &[("name", "upstream-fallback"), ("kind", "fallback_used")],
    );
    assert_eq!(c.fallback, fallback_used, "{summary:?}");
    assert_eq!(summary.fallback_used, fallback_used);
    assert_eq!(
        phases.iter().map(|p| p.fallback_used).sum::<u64>(),
        fallback_used
    );
    assert_eq!(
        count(
            &e,
            "buttress_fallback_calls_total",
            &[("name", "upstream-fallback"), ("kind", "fallback_failed")],
        ),
        0
    );

    // The cache: the clients' `x-cache: hit` and `stale` answers are the
    // cache's counts; every `/hot` request reached it (the steady clients
    // never get a 429), as a hit, a miss or a coalesced call (a stale
    // answer is one of the last two whose call failed).
    let cache = |result| {
        count(
            &e,
            "buttress_cache_requests_total",
            &[("name", "hot"), ("result", result)],
        )
    };
    let (hits, misses, coalesced, stale) = (
        cache("hit"),
        cache("miss"),
        cache("coalesced"),
        cache("stale"),
    );
    assert!(c.hot > 0, "{c:?}");
    assert!(hits > 0, "no /hot request was a hit: {c:?}");
    assert_eq!(c.hot_hit, hits, "{c:?}");
    assert_eq!(c.hot_stale, stale, "{c:?}");
    assert_eq!((summary.cache_hits, summary.cache_stale), (hits, stale));
    assert_eq!(
        (summary.cache_misses, summary.cache_coalesced),
        (misses, coalesced)
    );
    assert!(
        (c.hot - c.other.min(c.hot)..=c.hot).contains(&(hits + misses + coalesced)),
        "{hits} {misses} {coalesced} {c:?}"
    );
    assert!(
        c.hot_miss + c.hot_coalesced + c.hot_stale <= misses + coalesced,
        "{c:?}"
    );
    assert!(stale <= misses + coalesced);
    assert_eq!(phases.iter().map(|p| p.cache_hits).sum::<u64>(), hits);
    assert_eq!(phases.iter().map(|p| p.cache_stale).sum::<u64>(), stale);
    assert_eq!(summary.registry["hot"]["state"]["hits"], hits);
    assert_eq!(summary.registry["hot"]["state"]["stale"], stale);

    // The sagas: once the load is over none runs, so every saga started
    // ended, completed or compensated (none needs attention: the only
    // compensation is local); the warehouse saw each step's effect once.
    let sagas = |outcome| {
        count(
            &e,
            "buttress_saga_sagas_total",
            &[("name", "order"), ("outcome", outcome)],
        )
    };
    let (started, completed, compensated, needs_attention) = (
        sagas("started"),
        sagas("completed"),
        sagas("compensated"),
        sagas("needs_attention"),
    );
    assert!(started > 0, "no saga ran");
    assert!(completed > 0, "no saga completed");
    assert_eq!(completed + compensated, started);
    assert_eq!(needs_attention, 0);
    assert_eq!(
        (
            summary.sagas_started,
            summary.sagas_completed,
            summary.sagas_compensated,
            summary.sagas_needs_attention
        ),
        (started, completed, compensated, needs_attention)
    );
    assert_eq!(
        phases
            .iter()
            .map(|p| p.sagas_completed + p.sagas_compensated)
            .sum::<u64>(),
        started
    );
    assert_eq!(
        (
            summary.stock_reserved,
            summary.stock_released,
            summary.shipped
        ),
        (started, compensated, completed)
    );
    assert_eq!(
        count(
            &e,
            "buttress_saga_steps_total",
            &[("name", "order"), ("step", "charge"), ("outcome", "failed")],
        ),
        compensated
    );
    // The log's temporary directory is gone.
    assert!(
        summary.saga_log.starts_with(std::env::temp_dir()),
        "{:?}",
        summary.saga_log
    );
    assert!(!summary.saga_log.exists(), "{:?}", summary.saga_log);

    // Readiness: probed over HTTP at the end of every second, and
    // `buttress_health_ready` said the same right after; nothing has
    // probed since the last second.
    assert_eq!(summary.readiness.len(), 3, "{:?}", summary.readiness);
    assert_eq!(summary.ready_gauge.len(), 3, "{:?}", summary.ready_gauge);
    for (http, gauge) in summary.readiness.iter().zip(&summary.ready_gauge) {
        assert!(matches!(gauge, 200 | 503), "{gauge}");
        assert_eq!(*http, Some(*gauge), "{:?}", summary.readiness);
    }
    let ready = e.value("buttress_health_ready", &[]).unwrap();
    assert_eq!(
        ready,
        if summary.ready_gauge[2] == 200 {
            1.0
        } else {
            0.0
        }
    );
    assert_eq!(
        phases.iter().map(|p| p.not_ready_seconds).sum::<u64>(),
        summary
            .readiness
            .iter()
            .filter(|s| **s == Some(503))
            .count() as u64
    );
    for check in ["upstream", "capacity", "process"] {
        assert!(
            e.select("buttress_health_status", &[("check", check)])
                .next()
                .is_some(),
            "{check} in\n{text}"
        );
    }
    assert!(during.http_requests <= http);
    // The report prints each series with the scraped value.
    for (series, value) in [
        (
            "buttress_rate_limit_decisions_total{name=\"per-client\",decision=\"rejected\"}",
            rate_limited,
        ),
        (
            "buttress_circuit_breaker_calls_total{name=\"upstream\",kind=\"not_permitted\"}",
            not_permitted,
        ),
        (
            "buttress_bulkhead_calls_total{name=\"gateway\",kind=\"rejected\"}",
            bulkhead_rejected,
        ),
        (
            "buttress_retry_attempts_total{name=\"upstream-retry\"}",
            attempts,
        ),
        (
            "buttress_fallback_calls_total{name=\"upstream-fallback\",kind=\"fallback_used\"}",
            fallback_used,
        ),
        (
            "buttress_cache_requests_total{name=\"hot\",result=\"hit\"}",
            hits,
        ),
        (
            "buttress_cache_requests_total{name=\"hot\",result=\"stale\"}",
            stale,
        ),
        (
            "buttress_saga_sagas_total{name=\"order\",outcome=\"completed\"}",
            completed,
        ),
        (
            "buttress_saga_sagas_total{name=\"order\",outcome=\"compensated\"}",
            compensated,
        ),
    ] {
        let line = report
            .lines()
            .find(|l| l.trim_start().starts_with(series))
            .unwrap_or_else(|| panic!("{series} in\n{report}"));
        let printed: u64 = line.trim_start()[series.len()..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(printed, value, "{line}");
    }
    assert!(
        report.contains(&format!("from /metrics ({})", endpoint.url())),
        "{report}"
    );
    endpoint.shutdown().await.unwrap();
}
