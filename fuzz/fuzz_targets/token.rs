//! The token parser: any bytes as `Authorization: Bearer <bytes>` (and as the
//! whole header value). Verification must refuse or accept, never panic, and
//! never accept anything but a token the key set signed.

#![no_main]

use std::sync::OnceLock;

use compositions_jobs::Authenticator;
use hyper::HeaderMap;
use hyper::header::{AUTHORIZATION, HeaderValue};
use libfuzzer_sys::fuzz_target;

// Shared with the request target, which alone needs a valid token.
#[allow(dead_code)]
#[path = "common.rs"]
mod common;

fn authenticator() -> &'static Authenticator {
    static AUTHENTICATOR: OnceLock<Authenticator> = OnceLock::new();
    // A key file is read at once; its source is not needed to verify.
    AUTHENTICATOR.get_or_init(|| {
        Authenticator::from_config(&common::auth_config())
            .expect("keys")
            .0
    })
}

fuzz_target!(|data: &[u8]| {
    let mut bearer = b"Bearer ".to_vec();
    bearer.extend_from_slice(data);
    for value in [&bearer[..], data] {
        let Ok(value) = HeaderValue::from_bytes(value) else {
            continue;
        };
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, value);
        if let Ok(caller) = authenticator().authenticate(&headers) {
            // Only a signed token gets through, and it names our client.
            assert_eq!(caller.client_id, common::CLIENT, "accepted: {data:?}");
        }
    }
});
