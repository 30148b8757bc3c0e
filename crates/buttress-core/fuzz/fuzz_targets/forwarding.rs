//! `ClientIp` on any `X-Forwarded-For` or `Forwarded` value: no panic, and
//! with a peer address there is always a key: the peer, or an address the
//! parser read from the header.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use buttress_core::key::{ClientIp, ForwardedHeader};
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let trusted = usize::from(first % 8);
    let (name, header) = if first & 0x80 == 0 {
        ("x-forwarded-for", ForwardedHeader::XForwardedFor)
    } else {
        ("forwarded", ForwardedHeader::Forwarded)
    };
    let mut headers = HeaderMap::new();
    // Several lines of one header: split the value at each NUL byte.
    for line in rest.split(|b| *b == 0) {
        if let Ok(value) = HeaderValue::from_bytes(line) {
            headers.append(name, value);
        }
    }
    let peer = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let ip = ClientIp::new(trusted)
        .header(header)
        .client_ip(Some(peer), &headers);
    assert!(ip.is_some(), "a peer was given, so there is a key");
    assert_eq!(
        ClientIp::new(trusted)
            .header(header)
            .client_ip(None, &headers),
        None,
        "without the peer the chain has no anchor"
    );
});
