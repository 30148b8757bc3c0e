//! Validators, conditional requests and `Expires` (RFC 9110 §8.8 and §13,
//! RFC 9111 §4.2.1, §4.3 and §5.3).
//!
//! Every value parsed here comes from a peer and may be anything. The
//! policy: nothing panics; a malformed value is never read as a match or
//! as freshness. A malformed `If-None-Match` or `If-Modified-Since` is
//! ignored (the full response answers); a malformed stored `ETag` or
//! `Last-Modified` is no validator (the entry is not revalidated with
//! it); a malformed `Expires` means already expired, as RFC 9111 §5.3
//! asks; a malformed `Date` is read as absent.

use std::time::{Duration, SystemTime};

use http::header::{
    AGE, CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, CONTENT_LOCATION, DATE, ETAG, EXPIRES,
    IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE, LAST_MODIFIED,
    PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE, VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

/// The only value of `name`, if it has exactly one.
fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    let mut all = headers.get_all(name).iter();
    let first = all.next()?;
    all.next().is_none().then_some(first)
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// `etagc` of RFC 9110 §8.8.3: `!`, `#`-`~` and obs-text.
fn is_etagc(b: u8) -> bool {
    b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80
}

/// One entity-tag (`"x"` or `W/"x"`): whether it is weak, and its
/// opaque-tag without the quotes.
pub(crate) fn entity_tag(value: &[u8]) -> Option<(bool, &[u8])> {
    let value = trim(value);
    let (weak, rest) = match value.strip_prefix(b"W/") {
        Some(rest) => (true, rest),
        None => (false, value),
    };
    let opaque = rest.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    opaque
        .iter()
        .all(|&b| is_etagc(b))
        .then_some((weak, opaque))
}

/// The opaque-tag of a response's `ETag`, when it has exactly one valid
/// entity-tag.
fn etag_of(headers: &HeaderMap) -> Option<&[u8]> {
    single(headers, &ETAG).and_then(|v| entity_tag(v.as_bytes()).map(|(_, o)| o))
}

/// An HTTP-date (IMF-fixdate, RFC 850 or asctime form).
pub(crate) fn http_date(value: &HeaderValue) -> Option<SystemTime> {
    let text = value.to_str().ok()?;
    httpdate::parse_http_date(text.trim()).ok()
}

fn date_of(headers: &HeaderMap, name: &HeaderName) -> Option<SystemTime> {
    single(headers, name).and_then(http_date)
}

/// Whether `If-None-Match` fields match the opaque-tag `etag` with the
/// weak comparison (RFC 9110 §13.1.2): `None` when there is no field or
/// one of them is malformed (the fields are then ignored).
pub(crate) fn none_match(headers: &HeaderMap, etag: Option<&[u8]>) -> Option<bool> {
    let mut any = false;
    let mut matched = false;
    for value in headers.get_all(IF_NONE_MATCH) {
        any = true;
        let mut s = trim(value.as_bytes());
        if s == b"*" {
            // Any current representation: the stored one.
            matched = true;
            continue;
        }
        loop {
            // Empty list elements are allowed (RFC 9110 §5.6.1).
            while let [b' ' | b'\t' | b',', rest @ ..] = s {
                s = rest;
            }
            if s.is_empty() {
                break;
            }
            if let Some(rest) = s.strip_prefix(b"W/") {
                s = rest;
            }
            let rest = s.strip_prefix(b"\"")?;
            let end = rest.iter().position(|&b| b == b'"')?;
            let opaque = &rest[..end];
            if !opaque.iter().all(|&b| is_etagc(b)) {
                return None;
            }
            if etag == Some(opaque) {
                matched = true;
            }
            s = &rest[end + 1..];
            while let [b' ' | b'\t', rest @ ..] = s {
                s = rest;
            }
            match s {
                [] => break,
                [b',', ..] => {}
                _ => return None,
            }
        }
    }
    any.then_some(matched)
}

/// Whether a request carries a precondition of its own.
pub(crate) fn is_conditional(headers: &HeaderMap) -> bool {
    [
        IF_MATCH,
        IF_NONE_MATCH,
        IF_MODIFIED_SINCE,
        IF_UNMODIFIED_SINCE,
        IF_RANGE,
    ]
    .iter()
    .any(|name| headers.contains_key(name))
}

/// Whether a fresh stored response answers a request `304 Not Modified`
/// (RFC 9111 §4.3.2, RFC 9110 §13.2): a stored 2xx, a request without
/// `If-Match`, `If-Unmodified-Since` or `If-Range` (those go with the full
/// response), and an `If-None-Match` that matches the stored `ETag`, or,
/// without `If-None-Match`, an `If-Modified-Since` not before the stored
/// `Last-Modified`.
#[inline]
pub(crate) fn not_modified(request: &HeaderMap, status: StatusCode, stored: &HeaderMap) -> bool {
    if !request.contains_key(IF_NONE_MATCH) && !request.contains_key(IF_MODIFIED_SINCE) {
        return false;
    }
    not_modified_slow(request, status, stored)
}

#[cold]
fn not_modified_slow(request: &HeaderMap, status: StatusCode, stored: &HeaderMap) -> bool {
    if !status.is_success()
        || request.contains_key(IF_MATCH)
        || request.contains_key(IF_UNMODIFIED_SINCE)
        || request.contains_key(IF_RANGE)
    {
        return false;
    }
    if request.contains_key(IF_NONE_MATCH) {
        // If-Modified-Since is then ignored (RFC 9110 §13.1.3).
        return none_match(request, etag_of(stored)) == Some(true);
    }
    match (
        date_of(request, &IF_MODIFIED_SINCE),
        date_of(stored, &LAST_MODIFIED),
    ) {
        (Some(since), Some(modified)) => modified <= since,
        _ => false,
    }
}

/// The headers of a `304 Not Modified` made from a stored response: the
/// fields a 200 would have carried among those RFC 9110 §15.4.5 lists,
/// and `Last-Modified`.
pub(crate) fn not_modified_headers(stored: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in [
        CACHE_CONTROL,
        CONTENT_LOCATION,
        DATE,
        ETAG,
        EXPIRES,
        VARY,
        LAST_MODIFIED,
    ] {
        for value in stored.get_all(&name) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// The conditional header a revalidation of a stored response sends:
/// `If-None-Match` with its `ETag`, else `If-Modified-Since` with its
/// `Last-Modified`; `None` when it has no valid validator.
pub(crate) fn validator(stored: &HeaderMap) -> Option<(HeaderName, HeaderValue)> {
    if let Some(etag) = single(stored, &ETAG).filter(|v| entity_tag(v.as_bytes()).is_some()) {
        return Some((IF_NONE_MATCH, etag.clone()));
    }
    single(stored, &LAST_MODIFIED)
        .filter(|v| http_date(v).is_some())
        .map(|v| (IF_MODIFIED_SINCE, v.clone()))
}

/// Whether a `304 Not Modified` is about the stored response (RFC 9111
/// §4.3.4): its `ETag` (weak comparison) or, without one, its
/// `Last-Modified` equals the stored one when both have it. A 304 that
/// names no validator answers the conditional request this cache made
/// for that response and is taken as about it.
pub(crate) fn same_validators(stored: &HeaderMap, not_modified: &HeaderMap) -> bool {
    if not_modified.contains_key(ETAG) {
        return match (etag_of(not_modified), etag_of(stored)) {
            (Some(new), Some(old)) => new == old,
            // A stored response without an ETag: nothing to compare.
            (Some(_), None) => !stored.contains_key(ETAG),
            // Malformed or repeated: not a validator of this response.
            (None, _) => false,
        };
    }
    if not_modified.contains_key(LAST_MODIFIED) && stored.contains_key(LAST_MODIFIED) {
        return match (
            date_of(not_modified, &LAST_MODIFIED),
            date_of(stored, &LAST_MODIFIED),
        ) {
            (Some(new), Some(old)) => new == old,
            _ => false,
        };
    }
    true
}

/// Whether a field of a 304 is left out of the update of a stored
/// response (RFC 9111 §3.2): `Content-Length`, the hop-by-hop fields and
/// those `Connection` names.
fn kept_out(name: &HeaderName, connection: &HeaderMap) -> bool {
    if [
        CONTENT_LENGTH,
        CONNECTION,
        TE,
        TRAILER,
        TRANSFER_ENCODING,
        UPGRADE,
        PROXY_AUTHENTICATE,
        PROXY_AUTHORIZATION,
    ]
    .contains(name)
        || matches!(
            name.as_str(),
            "keep-alive" | "proxy-connection" | "proxy-authentication-info"
        )
    {
        return true;
    }
    connection.get_all(CONNECTION).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|token| token.trim().eq_ignore_ascii_case(name.as_str()))
        })
    })
}

/// The stored headers updated with those of a `304 Not Modified`: each
/// field the 304 carries replaces the stored field of that name (RFC 9111
/// §3.2 and §4.3.4). The stored `Age` goes: the response was just
/// validated (the 304's own `Age`, if any, takes its place).
pub(crate) fn updated_headers(stored: &HeaderMap, not_modified: &HeaderMap) -> HeaderMap {
    let mut out = stored.clone();
    out.remove(AGE);
    for name in not_modified.keys() {
        if !kept_out(name, not_modified) {
            out.remove(name);
        }
    }
    for (name, value) in not_modified {
        if !kept_out(name, not_modified) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// The freshness lifetime `Expires` gives (RFC 9111 §4.2.1, §5.3): `None`
/// without `Expires`; `Expires` minus `Date` (or minus `now`, the time
/// the response was received, without a valid `Date`); zero when it is
/// not after that, malformed or repeated.
pub(crate) fn expires_lifetime(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if !headers.contains_key(EXPIRES) {
        return None;
    }
    let Some(expires) = date_of(headers, &EXPIRES) else {
        return Some(Duration::ZERO);
    };
    let date = date_of(headers, &DATE).unwrap_or(now);
    Some(expires.duration_since(date).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn entity_tags_parse_strictly() {
        assert_eq!(entity_tag(b"\"abc\""), Some((false, &b"abc"[..])));
        assert_eq!(entity_tag(b" W/\"a,b\" "), Some((true, &b"a,b"[..])));
        assert_eq!(entity_tag(b"\"\""), Some((false, &b""[..])));
        for bad in [&b"abc"[..], b"\"abc", b"\"", b"w/\"a\"", b"\"a\"b\"", b""] {
            assert_eq!(entity_tag(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn if_none_match_uses_the_weak_comparison_and_ignores_malformed_fields() {
        let etag = Some(&b"v1"[..]);
        assert_eq!(
            none_match(&map(&[("if-none-match", "\"v1\"")]), etag),
            Some(true)
        );
        assert_eq!(
            none_match(&map(&[("if-none-match", "W/\"v1\"")]), etag),
            Some(true)
        );
        assert_eq!(
            none_match(&map(&[("if-none-match", "\"v0\", ,W/\"v1\"")]), etag),
            Some(true)
        );
        assert_eq!(
            none_match(
                &map(&[("if-none-match", "\"v0\""), ("if-none-match", "\"v1\"")]),
                etag
            ),
            Some(true)
        );
        assert_eq!(
            none_match(&map(&[("if-none-match", "\"v2\"")]), etag),
            Some(false)
        );
        assert_eq!(
            none_match(&map(&[("if-none-match", "*")]), None),
            Some(true)
        );
        assert_eq!(
            none_match(&map(&[("if-none-match", "\"v2\"")]), None),
            Some(false)
        );
        for bad in ["v1", "\"v1", "\"v1\" x", "*, \"v1\"", "\"v1\" \"v1\""] {
            assert_eq!(
                none_match(&map(&[("if-none-match", bad)]), etag),
                None,
                "{bad}"
            );
        }
        assert_eq!(none_match(&HeaderMap::new(), etag), None);
    }

    #[test]
    fn not_modified_from_a_stored_response() {
        let stored = map(&[
            ("etag", "\"v1\""),
            ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        let ok = StatusCode::OK;
        let req = |pairs| map(pairs);
        assert!(not_modified(
            &req(&[("if-none-match", "\"v1\"")]),
            ok,
            &stored
        ));
        // Only for a 2xx.
        assert!(!not_modified(
            &req(&[("if-none-match", "\"v1\"")]),
            StatusCode::NOT_FOUND,
            &stored
        ));
        // If-None-Match wins over If-Modified-Since.
        assert!(!not_modified(
            &req(&[
                ("if-none-match", "\"v0\""),
                ("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")
            ]),
            ok,
            &stored
        ));
        assert!(not_modified(
            &req(&[("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")]),
            ok,
            &stored
        ));
        assert!(!not_modified(
            &req(&[("if-modified-since", "Sun, 06 Nov 1994 08:49:36 GMT")]),
            ok,
            &stored
        ));
        assert!(!not_modified(
            &req(&[("if-modified-since", "yesterday")]),
            ok,
            &stored
        ));
        assert!(!not_modified(
            &req(&[("if-none-match", "\"v1\""), ("if-match", "\"v1\"")]),
            ok,
            &stored
        ));
        assert!(!not_modified(&HeaderMap::new(), ok, &stored));
    }

    #[test]
    fn the_validator_sent_is_the_etag_else_last_modified() {
        let (name, value) = validator(&map(&[
            ("etag", "W/\"v1\""),
            ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]))
        .unwrap();
        assert_eq!((name, value.to_str().unwrap()), (IF_NONE_MATCH, "W/\"v1\""));
        let (name, value) = validator(&map(&[
            ("etag", "unquoted"),
            ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]))
        .unwrap();
        assert_eq!(
            (name, value.to_str().unwrap()),
            (IF_MODIFIED_SINCE, "Sun, 06 Nov 1994 08:49:37 GMT")
        );
        assert_eq!(validator(&map(&[("last-modified", "0")])), None);
        assert_eq!(validator(&HeaderMap::new()), None);
    }

    #[test]
    fn a_304_must_name_the_stored_validators() {
        let stored = map(&[("etag", "\"v1\"")]);
        assert!(same_validators(&stored, &map(&[("etag", "W/\"v1\"")])));
        assert!(same_validators(&stored, &HeaderMap::new()));
        assert!(!same_validators(&stored, &map(&[("etag", "\"v2\"")])));
        assert!(!same_validators(&stored, &map(&[("etag", "v1")])));
        let stored = map(&[("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        assert!(same_validators(
            &stored,
            &map(&[("last-modified", "Sunday, 06-Nov-94 08:49:37 GMT")])
        ));
        assert!(!same_validators(
            &stored,
            &map(&[("last-modified", "Sun, 06 Nov 1994 08:49:38 GMT")])
        ));
    }

    #[test]
    fn a_304_updates_the_stored_fields_but_not_content_length() {
        let stored = map(&[
            ("content-length", "5"),
            ("cache-control", "max-age=1"),
            ("x-a", "1"),
            ("x-a", "2"),
            ("x-kept", "k"),
            ("age", "100"),
        ]);
        let new = map(&[
            ("content-length", "0"),
            ("cache-control", "max-age=60"),
            ("x-a", "3"),
            ("connection", "x-hop"),
            ("x-hop", "h"),
        ]);
        let out = updated_headers(&stored, &new);
        assert_eq!(out["content-length"], "5");
        assert_eq!(out["cache-control"], "max-age=60");
        assert_eq!(out.get_all("x-a").iter().count(), 1);
        assert_eq!(out["x-a"], "3");
        assert_eq!(out["x-kept"], "k");
        assert!(!out.contains_key("age"));
        let out = updated_headers(&stored, &map(&[("age", "3")]));
        assert_eq!(out["age"], "3");
        assert!(!out.contains_key("x-hop"));
        assert!(!out.contains_key("connection"));
    }

    #[test]
    fn expires_is_a_lifetime_from_date_and_invalid_means_expired() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:00:00 GMT").unwrap();
        let h = map(&[
            ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("expires", "Sun, 06 Nov 1994 08:50:37 GMT"),
        ]);
        assert_eq!(expires_lifetime(&h, now), Some(Duration::from_secs(60)));
        // Without Date: from the time received.
        let h = map(&[("expires", "Sun, 06 Nov 1994 08:00:30 GMT")]);
        assert_eq!(expires_lifetime(&h, now), Some(Duration::from_secs(30)));
        for bad in ["0", "-1", "tomorrow", ""] {
            let h = map(&[("expires", bad)]);
            assert_eq!(expires_lifetime(&h, now), Some(Duration::ZERO), "{bad}");
        }
        let h = map(&[
            ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("expires", "Sun, 06 Nov 1994 08:00:00 GMT"),
        ]);
        assert_eq!(expires_lifetime(&h, now), Some(Duration::ZERO));
        assert_eq!(expires_lifetime(&HeaderMap::new(), now), None);
    }
}
