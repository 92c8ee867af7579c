//! What CAs and OCSP responders send back, from anyone on the path to them: an HTTP reply read
//! whole, an OCSP response, an ARI window, a directory, a certificate-order reply. Nothing may
//! panic; an accepted OCSP answer is current and about the serial asked for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringway_core::acme::renew::{parse_window, rfc3339};
use ringway_core::acme::{renewal_info_url, Order, Reply, Signer, Step, Url};
use ringway_core::http::Method;

struct Key;

impl Signer for Key {
    fn jwk(&self) -> &str {
        r#"{"crv":"P-256","kty":"EC","x":"eA","y":"eQ"}"#
    }
    fn sign(&self, _: &[u8]) -> Vec<u8> {
        vec![0; 64]
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = Reply::parse(data, Method::Get);
    let _ = Reply::parse(data, Method::Head);
    let now = 1_796_331_600;
    if let Ok(c) = ringway_core::ocsp::check(data, &[0x12, 0x34], now) {
        assert!(c.valid_at(now));
        assert!(c.refresh_at(now) > now);
    }
    let _ = parse_window(data);
    let _ = renewal_info_url(data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = rfc3339(s);
        let _ = Url::parse(s);
        let _ = ringway_core::ocsp::responder(s);
        let _ = ringway_core::acme::challenge_token(s.as_bytes());
    }
    // The bytes as every reply of an order in turn: it ends (done, failed) or keeps asking,
    // within a bounded number of steps.
    let mut o = Order::new(
        "https://ca.test/dir",
        vec!["a.test".into()],
        vec![],
        vec![ringway_core::acme::ChallengeKind::Http01],
        vec![1],
        None,
        Key.jwk(),
    );
    for _ in 0..40 {
        match o.poll(&Key) {
            Step::Send(_) => o.handle(Reply {
                status: 200,
                location: Some("https://ca.test/x".into()),
                nonce: Some("n".into()),
                retry_after: None,
                body: data.to_vec(),
            }),
            Step::Done(_) | Step::Failed(_) => break,
            Step::Publish(_) | Step::Wait(_) => {}
        }
    }
});
