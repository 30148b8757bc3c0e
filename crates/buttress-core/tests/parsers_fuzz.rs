//! Property-based fuzzing of what core reads from the network and writes
//! back to it: the `grpc-timeout` parser, the `X-Forwarded-For` and
//! `Forwarded` chains of [`ClientIp`], the `RateLimit-Policy` and
//! `RateLimit` headers (read back with a Structured Field parser of this
//! file), `Retry-After` seconds, and humantime durations in configs.
//!
//! Every property runs on arbitrary input (no panic, a documented result)
//! and on generated valid input (the exact documented result, a round trip
//! where there is one). Case counts are bounded, and every input is a few
//! dozen bytes at most, so each property ends in well under a second.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use buttress_core::deadline::parse_grpc_timeout;
use buttress_core::key::{ClientIp, ForwardedHeader};
use buttress_core::response::{
    error_response, ratelimit_headers, retry_after_secs, RATELIMIT, RATELIMIT_POLICY,
};
use buttress_core::{Quota, RateLimited};
use http::{HeaderMap, HeaderValue, StatusCode};
use proptest::prelude::*;

fn cases() -> ProptestConfig {
    ProptestConfig::with_cases(512)
}

// ===== grpc-timeout =====

/// The gRPC over HTTP/2 spec's `TimeoutValue TimeoutUnit`, written
/// independently of the parser: 1 to 8 ASCII digits, then one unit.
fn grpc_timeout_reference(bytes: &[u8]) -> Option<Duration> {
    let text = std::str::from_utf8(bytes).ok()?;
    let unit = text.chars().last()?;
    let digits = &text[..text.len() - unit.len_utf8()];
    if !(1..=8).contains(&digits.len()) || !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let nanos_per_unit: u64 = match unit {
        'H' => 3_600_000_000_000,
        'M' => 60_000_000_000,
        'S' => 1_000_000_000,
        'm' => 1_000_000,
        'u' => 1_000,
        'n' => 1,
        _ => return None,
    };
    let nanos = u128::from(n) * u128::from(nanos_per_unit);
    Some(Duration::new(
        u64::try_from(nanos / 1_000_000_000).unwrap(),
        (nanos % 1_000_000_000) as u32,
    ))
}

fn grpc_timeout_inputs() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..16),
        "[0-9]{0,10}[HMSmunsh x]{0,2}".prop_map(String::into_bytes),
        "[ +-]?[0-9]{1,9}[HMSmun]".prop_map(String::into_bytes),
    ]
}

const GRPC_UNITS: [char; 6] = ['H', 'M', 'S', 'm', 'u', 'n'];

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn grpc_timeout_matches_the_spec_on_any_bytes(bytes in grpc_timeout_inputs()) {
        // Bytes a header value cannot hold never reach the parser.
        if let Ok(value) = HeaderValue::from_bytes(&bytes) {
            prop_assert_eq!(parse_grpc_timeout(&value), grpc_timeout_reference(&bytes));
        }
    }

    #[test]
    fn grpc_timeout_reads_every_valid_value(
        n in 0u64..100_000_000,
        unit in proptest::sample::select(&GRPC_UNITS[..]),
        zero_padded in any::<bool>(),
    ) {
        let text = if zero_padded { format!("{n:08}{unit}") } else { format!("{n}{unit}") };
        let value = HeaderValue::from_str(&text).unwrap();
        let expected = match unit {
            'H' => Duration::from_secs(n * 3600),
            'M' => Duration::from_secs(n * 60),
            'S' => Duration::from_secs(n),
            'm' => Duration::from_millis(n),
            'u' => Duration::from_micros(n),
            _ => Duration::from_nanos(n),
        };
        prop_assert_eq!(parse_grpc_timeout(&value), Some(expected));
    }
}

// ===== X-Forwarded-For and Forwarded =====

fn ips() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|n| IpAddr::V4(Ipv4Addr::from(n))),
        any::<u128>().prop_map(|n| IpAddr::V6(Ipv6Addr::from(n))),
    ]
}

/// One hop as a proxy may write it: with or without a port, an IPv6
/// address with or without brackets (brackets required with a port).
#[derive(Debug, Clone)]
struct Hop {
    ip: IpAddr,
    port: Option<u16>,
    brackets: bool,
}

impl Hop {
    fn node(&self) -> String {
        match (self.ip, self.port) {
            (IpAddr::V4(ip), None) => ip.to_string(),
            (IpAddr::V4(ip), Some(port)) => format!("{ip}:{port}"),
            (IpAddr::V6(ip), None) if self.brackets => format!("[{ip}]"),
            (IpAddr::V6(ip), None) => ip.to_string(),
            (IpAddr::V6(ip), Some(port)) => format!("[{ip}]:{port}"),
        }
    }
}

fn hops() -> impl Strategy<Value = Vec<Hop>> {
    proptest::collection::vec(
        (ips(), proptest::option::of(any::<u16>()), any::<bool>())
            .prop_map(|(ip, port, brackets)| Hop { ip, port, brackets }),
        0..6,
    )
}

/// The client as the docs define it: the hop `trusted` places before the
/// peer in the chain (the listed hops, then the peer), or the peer when
/// the chain is not that long or nothing is trusted.
fn expected_client(hops: &[Hop], peer: IpAddr, trusted: usize) -> IpAddr {
    let mut chain: Vec<IpAddr> = hops.iter().map(|h| h.ip).collect();
    chain.push(peer);
    if trusted == 0 || chain.len() <= trusted {
        peer
    } else {
        chain[chain.len() - 1 - trusted]
    }
}

/// The hops across `lines` header lines (a proxy may add its own line
/// rather than extend the last one), entries joined by `sep`.
fn header_lines(entries: &[String], lines: usize, sep: &str) -> Vec<String> {
    if entries.is_empty() {
        return Vec::new();
    }
    let per_line = entries.len().div_ceil(lines.max(1));
    entries.chunks(per_line).map(|c| c.join(sep)).collect()
}

fn headers(name: &'static str, lines: &[String]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for line in lines {
        headers.append(name, HeaderValue::from_str(line).unwrap());
    }
    headers
}

fn separators() -> impl Strategy<Value = &'static str> {
    proptest::sample::select(&[",", ", ", " ,", " , ", ",\t"][..])
}

/// Text that is no IP address, with or without a port.
fn not_an_ip() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("unknown".to_owned()),
        Just("_hidden".to_owned()),
        Just("".to_owned()),
        Just("1.2.3".to_owned()),
        Just("[1.2.3.4]".to_owned()),
        Just("2001:db8::1:80:x".to_owned()),
        "[a-z_]{1,8}",
    ]
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn x_forwarded_for_picks_the_documented_hop(
        hops in hops(),
        peer in ips(),
        trusted in 0usize..8,
        lines in 1usize..4,
        sep in separators(),
    ) {
        let entries: Vec<String> = hops.iter().map(Hop::node).collect();
        let headers = headers("x-forwarded-for", &header_lines(&entries, lines, sep));
        let ip = ClientIp::new(trusted).client_ip(Some(peer), &headers);
        prop_assert_eq!(ip, Some(expected_client(&hops, peer, trusted)));
    }

    #[test]
    fn forwarded_picks_the_documented_hop(
        hops in hops(),
        peer in ips(),
        trusted in 0usize..8,
        lines in 1usize..4,
        sep in separators(),
        quote in any::<bool>(),
        extra in proptest::sample::select(&["", ";proto=https", "by=10.0.0.1;", ";host=\"a.example\""][..]),
    ) {
        let entries: Vec<String> = hops
            .iter()
            .map(|h| {
                let node = h.node();
                // A node with `:` or `[` must be quoted (RFC 7239); others may be.
                let node = if quote || node.contains([':', '[']) { format!("\"{node}\"") } else { node };
                match extra {
                    "" => format!("for={node}"),
                    e if e.ends_with(';') => format!("{e}For={node}"),
                    e => format!("for={node}{e}"),
                }
            })
            .collect();
        let headers = headers("forwarded", &header_lines(&entries, lines, sep));
        let ip = ClientIp::new(trusted)
            .header(ForwardedHeader::Forwarded)
            .client_ip(Some(peer), &headers);
        prop_assert_eq!(ip, Some(expected_client(&hops, peer, trusted)));
    }

    #[test]
    fn a_chain_with_a_malformed_hop_falls_back_to_the_peer(
        hops in hops(),
        bad in not_an_ip(),
        at in any::<proptest::sample::Index>(),
        peer in ips(),
        trusted in 1usize..8,
        forwarded in any::<bool>(),
    ) {
        let mut entries: Vec<String> = hops.iter().map(Hop::node).collect();
        entries.insert(at.index(entries.len() + 1), bad);
        let (name, header) = if forwarded {
            entries = entries.iter().map(|e| format!("for=\"{e}\"")).collect();
            ("forwarded", ForwardedHeader::Forwarded)
        } else {
            ("x-forwarded-for", ForwardedHeader::XForwardedFor)
        };
        let headers = headers(name, &[entries.join(", ")]);
        let ip = ClientIp::new(trusted).header(header).client_ip(Some(peer), &headers);
        prop_assert_eq!(ip, Some(peer), "a forgeable chain is not read past a bad hop");
    }

    #[test]
    fn any_forwarding_header_gives_the_peer_or_a_listed_hop(
        text in proptest::collection::vec(any::<u8>(), 0..48),
        printable in "[ -~]{0,48}",
        peer in proptest::option::of(ips()),
        trusted in 0usize..4,
        forwarded in any::<bool>(),
    ) {
        let header = if forwarded { ForwardedHeader::Forwarded } else { ForwardedHeader::XForwardedFor };
        let name = if forwarded { "forwarded" } else { "x-forwarded-for" };
        for bytes in [text.as_slice(), printable.as_bytes()] {
            let Ok(value) = HeaderValue::from_bytes(bytes) else { continue };
            let mut headers = HeaderMap::new();
            headers.insert(name, value);
            let ip = ClientIp::new(trusted).header(header).client_ip(peer, &headers);
            match (peer, ip) {
                // Without the peer the chain has no anchor: no key (the
                // peer itself, `None`, when nothing is trusted).
                (None, ip) => prop_assert_eq!(ip, None),
                (Some(peer), Some(ip)) if ip == peer => {}
                // Otherwise a hop the header lists, as text the parser read.
                (Some(_), Some(ip)) => {
                    prop_assert!(trusted > 0);
                    let text = String::from_utf8_lossy(bytes).to_ascii_lowercase();
                    let listed = match ip {
                        IpAddr::V4(v4) => text.contains(&v4.to_string()),
                        // IPv6 text has many spellings; the address parses
                        // from one of the header's tokens.
                        IpAddr::V6(_) => text
                            .split([',', ';', '=', '"', ' ', '\t'])
                            .any(|t| {
                                let t = t.trim_start_matches('[');
                                let t = t.split(']').next().unwrap_or(t);
                                t.parse::<IpAddr>().is_ok_and(|p| p == ip)
                            }),
                    };
                    prop_assert!(listed, "{ip} is not in {text:?}");
                }
                (Some(_), None) => prop_assert!(false, "a peer was given, so there is a key"),
            }
        }
    }
}

// ===== RateLimit-Policy and RateLimit =====

/// The largest Structured Field Integer.
const SF_INTEGER_MAX: u64 = 999_999_999_999_999;

/// A Structured Field List of one Item, a String with Integer parameters
/// (RFC 8941, the part these headers use), read strictly.
fn parse_sf_item(value: &HeaderValue) -> Result<(String, Vec<(String, u64)>), String> {
    let text = value.to_str().map_err(|e| e.to_string())?;
    let mut chars = text.chars();
    if chars.next() != Some('"') {
        return Err(format!("{text:?}: no opening quote"));
    }
    let mut name = String::new();
    loop {
        match chars.next() {
            None => return Err(format!("{text:?}: no closing quote")),
            Some('"') => break,
            Some('\\') => match chars.next() {
                Some(c @ ('"' | '\\')) => name.push(c),
                other => return Err(format!("{text:?}: bad escape {other:?}")),
            },
            Some(c @ ' '..='~') => name.push(c),
            Some(c) => return Err(format!("{text:?}: {c:?} in a String")),
        }
    }
    let mut params = Vec::new();
    let rest = chars.as_str();
    if rest.is_empty() {
        return Ok((name, params));
    }
    let rest = rest
        .strip_prefix(';')
        .ok_or(format!("{text:?}: junk after the String"))?;
    for param in rest.split(';') {
        let (key, value) = param
            .split_once('=')
            .ok_or(format!("{text:?}: {param:?}"))?;
        let key_ok = key.starts_with(|c: char| c.is_ascii_lowercase())
            && key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.*".contains(c));
        let digits_ok =
            (1..=15).contains(&value.len()) && value.chars().all(|c| c.is_ascii_digit());
        if !key_ok || !digits_ok {
            return Err(format!("{text:?}: {param:?} is no Integer parameter"));
        }
        params.push((key.to_owned(), value.parse().unwrap()));
    }
    Ok((name, params))
}

/// The policy name as the headers document it: each byte outside printable
/// ASCII replaced by `_`.
fn sanitized(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if (0x20..=0x7e).contains(&b) {
                char::from(b)
            } else {
                '_'
            }
        })
        .collect()
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
}

fn durations() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::MAX),
        (0u64..100_000, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
    ]
}

fn numbers() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0),
        Just(SF_INTEGER_MAX),
        Just(SF_INTEGER_MAX + 1),
        Just(u64::MAX),
        0u64..1000,
        any::<u64>()
    ]
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn ratelimit_headers_read_back_as_the_quota(
        policy in prop_oneof!["[ -~]{0,24}", any::<String>(), Just("a\"b\\c".to_owned())],
        limit in numbers(),
        window in durations(),
        remaining in numbers(),
        reset in durations(),
    ) {
        let quota = Quota::new(policy.as_str().into(), limit, window, remaining, reset);
        let mut headers = HeaderMap::new();
        ratelimit_headers(&quota, &mut headers);

        let (name, params) = parse_sf_item(&headers[RATELIMIT_POLICY]).map_err(TestCaseError::fail)?;
        prop_assert_eq!(&name, &sanitized(&policy));
        let mut expected = vec![("q".to_owned(), limit.min(SF_INTEGER_MAX))];
        // No `w` for a zero window, which the draft does not allow.
        if ceil_secs(window) > 0 {
            expected.push(("w".to_owned(), ceil_secs(window).min(SF_INTEGER_MAX)));
        }
        prop_assert_eq!(params, expected);

        let (name, params) = parse_sf_item(&headers[RATELIMIT]).map_err(TestCaseError::fail)?;
        prop_assert_eq!(&name, &sanitized(&policy));
        prop_assert_eq!(
            params,
            vec![
                ("r".to_owned(), remaining.min(SF_INTEGER_MAX)),
                ("t".to_owned(), ceil_secs(reset).min(SF_INTEGER_MAX)),
            ]
        );
    }

    #[test]
    fn a_rate_limited_response_carries_retry_after_and_the_quota(
        wait in proptest::option::of(durations()),
        limit in numbers(),
        window in durations(),
    ) {
        let quota = Quota::new("api".into(), limit, window, 0, wait.unwrap_or_default());
        let err = RateLimited::new("api".into(), wait).with_quota(quota.clone());
        let res = error_response::<()>(&err, StatusCode::GATEWAY_TIMEOUT);
        prop_assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry_after = res
            .headers()
            .get(http::header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
        prop_assert_eq!(retry_after, wait.and_then(retry_after_secs));
        let mut expected = HeaderMap::new();
        ratelimit_headers(&quota, &mut expected);
        prop_assert_eq!(res.headers().get(RATELIMIT_POLICY), expected.get(RATELIMIT_POLICY));
        prop_assert_eq!(res.headers().get(RATELIMIT), expected.get(RATELIMIT));
    }

    #[test]
    fn retry_after_seconds_never_tell_a_client_to_come_back_early(wait in durations()) {
        match retry_after_secs(wait) {
            None => prop_assert_eq!(wait, Duration::ZERO),
            Some(secs) => {
                prop_assert!(secs >= 1);
                // Rounded up, to the second: never early, never a second late.
                if secs < u64::MAX {
                    prop_assert!(Duration::from_secs(secs) >= wait);
                }
                prop_assert!(Duration::from_secs(secs - 1) < wait);
            }
        }
    }
}

// ===== humantime durations in configs =====

#[cfg(feature = "serde")]
mod humantime_config {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Config {
        #[serde(with = "buttress_core::config::duration")]
        wait: Duration,
        #[serde(with = "buttress_core::config::option_duration")]
        max: Option<Duration>,
    }

    fn humantime_texts() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[0-9]{1,22}(ns|us|ms|s|m|h|d|w|M|y|sec|min|hours|days|years| )?",
            "([0-9]{1,6}[a-z]{1,5} ?){1,4}",
        ]
    }

    proptest! {
        #![proptest_config(cases())]

        #[test]
        fn durations_round_trip_through_a_config(wait in durations(), max in proptest::option::of(durations())) {
            let config = Config { wait, max };
            let json = serde_json::to_string(&config).unwrap();
            let back: Config = serde_json::from_str(&json).map_err(|e| TestCaseError::fail(format!("{json}: {e}")))?;
            prop_assert_eq!(back, config);
        }

        #[test]
        fn any_duration_text_is_a_duration_or_an_error(text in humantime_texts()) {
            let json = serde_json::json!({ "wait": text, "max": text }).to_string();
            if let Ok(config) = serde_json::from_str::<Config>(&json) {
                // What was read is what is written back, and reads again
                // as itself.
                prop_assert_eq!(Some(config.wait), config.max);
                let again: Config = serde_json::from_str(&serde_json::to_string(&config).unwrap()).unwrap();
                prop_assert_eq!(again, config);
            }
        }
    }
}
