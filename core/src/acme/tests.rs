use std::time::Duration;

use serde_json::{json, Value};

use super::renew::{cert_id, parse_window, rfc3339, Backoff, Validity, Window};
use super::*;
use crate::http::Method;

struct FakeKey;

const JWK: &str = r#"{"crv":"P-256","kty":"EC","x":"eHg","y":"eXk"}"#;

impl Signer for FakeKey {
    fn jwk(&self) -> &str {
        JWK
    }
    fn sign(&self, input: &[u8]) -> Vec<u8> {
        // Not a signature: the input's length, so that a test can tell what was signed.
        input.len().to_be_bytes().to_vec()
    }
}

fn reply(status: u16, nonce: &str, location: Option<&str>, body: Value) -> Reply {
    Reply {
        status,
        location: location.map(str::to_string),
        nonce: Some(nonce.to_string()),
        retry_after: None,
        body: if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        },
    }
}

/// The request a step asks for, its JWS decoded: (method, url, protected header, payload).
fn sent(step: Step) -> (Method, String, Value, String) {
    let Step::Send(r) = step else {
        panic!("expected a request, got {step:?}")
    };
    let Some(body) = r.body else {
        return (r.method, r.url, Value::Null, String::new());
    };
    let jws: Value = serde_json::from_str(&body).unwrap();
    let dec = |k: &str| {
        use base64::Engine;
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(jws[k].as_str().unwrap())
            .unwrap();
        String::from_utf8_lossy(&b).into_owned()
    };
    let protected: Value = serde_json::from_str(&dec("protected")).unwrap();
    (r.method, r.url, protected, dec("payload"))
}

fn order(kinds: Vec<ChallengeKind>, replaces: Option<&str>) -> Order {
    Order::new(
        "https://ca.test/dir",
        vec!["a.test".into()],
        vec!["mailto:ops@a.test".into()],
        kinds,
        vec![1, 2, 3],
        replaces.map(str::to_string),
        JWK,
    )
}

/// Runs an order from the directory to its first authorization read.
fn up_to_authorization(o: &mut Order) {
    let (m, url, ..) = sent(o.poll(&FakeKey));
    assert_eq!((m, url.as_str()), (Method::Get, "https://ca.test/dir"));
    o.handle(Reply {
        status: 200,
        body: json!({"newNonce": "https://ca.test/nonce", "newAccount": "https://ca.test/acct",
                     "newOrder": "https://ca.test/order", "renewalInfo": "https://ca.test/ari"})
        .to_string()
        .into_bytes(),
        ..Reply::default()
    });
    // No nonce yet: one is fetched first.
    let (m, url, ..) = sent(o.poll(&FakeKey));
    assert_eq!((m, url.as_str()), (Method::Head, "https://ca.test/nonce"));
    o.handle(reply(200, "n1", None, Value::Null));
    let (m, url, p, payload) = sent(o.poll(&FakeKey));
    assert_eq!((m, url.as_str()), (Method::Post, "https://ca.test/acct"));
    assert_eq!(p["nonce"], "n1");
    assert_eq!(p["alg"], "ES256");
    assert_eq!(p["url"], "https://ca.test/acct");
    assert_eq!(
        p["jwk"]["x"], "eHg",
        "a new account is signed with the key itself"
    );
    assert!(p.get("kid").is_none());
    let payload: Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(payload["termsOfServiceAgreed"], true);
    assert_eq!(payload["contact"], json!(["mailto:ops@a.test"]));
    o.handle(reply(
        201,
        "n2",
        Some("https://ca.test/acct/7"),
        json!({"status": "valid"}),
    ));
    assert_eq!(o.account(), Some("https://ca.test/acct/7"));
    let (_, url, p, payload) = sent(o.poll(&FakeKey));
    assert_eq!(url, "https://ca.test/order");
    assert_eq!(p["kid"], "https://ca.test/acct/7");
    assert!(p.get("jwk").is_none());
    assert_eq!(p["nonce"], "n2");
    let payload: Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(
        payload["identifiers"],
        json!([{"type": "dns", "value": "a.test"}])
    );
    o.handle(reply(
        201,
        "n3",
        Some("https://ca.test/order/1"),
        json!({"status": "pending", "authorizations": ["https://ca.test/authz/1"],
               "finalize": "https://ca.test/order/1/finalize"}),
    ));
}

fn authz(status: &str, challenges: Value) -> Value {
    json!({"status": status, "identifier": {"type": "dns", "value": "a.test"}, "challenges": challenges})
}

#[test]
fn an_order_from_directory_to_certificate() {
    let mut o = order(vec![ChallengeKind::Http01, ChallengeKind::TlsAlpn01], None);
    up_to_authorization(&mut o);
    let (_, url, _, payload) = sent(o.poll(&FakeKey));
    assert_eq!(url, "https://ca.test/authz/1");
    assert_eq!(payload, "", "POST-as-GET has an empty payload");
    o.handle(reply(
        200,
        "n4",
        None,
        authz(
            "pending",
            json!([
                {"type": "dns-01", "url": "https://ca.test/ch/d", "token": "tokD", "status": "pending"},
                {"type": "tls-alpn-01", "url": "https://ca.test/ch/t", "token": "tokT", "status": "pending"},
                {"type": "http-01", "url": "https://ca.test/ch/h", "token": "tok_H-1", "status": "pending"}
            ]),
        ),
    ));
    let Step::Publish(c) = o.poll(&FakeKey) else {
        panic!()
    };
    assert_eq!(c.kind, ChallengeKind::Http01);
    assert_eq!(c.name, "a.test");
    assert_eq!(c.token, "tok_H-1");
    assert_eq!(
        c.key_authorization,
        format!("tok_H-1.{}", order::thumbprint(JWK))
    );
    // Published: now the CA is told to look.
    let (_, url, _, payload) = sent(o.poll(&FakeKey));
    assert_eq!(
        (url.as_str(), payload.as_str()),
        ("https://ca.test/ch/h", "{}")
    );
    o.handle(reply(200, "n5", None, json!({"status": "processing"})));
    let (_, url, ..) = sent(o.poll(&FakeKey));
    assert_eq!(url, "https://ca.test/authz/1");
    let mut r = reply(
        200,
        "n6",
        None,
        authz(
            "pending",
            json!([
                {"type": "http-01", "url": "https://ca.test/ch/h", "token": "tok_H-1", "status": "processing"}
            ]),
        ),
    );
    r.retry_after = Some(Duration::from_secs(3));
    o.handle(r);
    assert_eq!(o.poll(&FakeKey), Step::Wait(Duration::from_secs(3)));
    let (_, url, ..) = sent(o.poll(&FakeKey));
    assert_eq!(url, "https://ca.test/authz/1");
    o.handle(reply(200, "n7", None, authz("valid", json!([]))));
    let (_, url, _, payload) = sent(o.poll(&FakeKey));
    assert_eq!(url, "https://ca.test/order/1/finalize");
    assert_eq!(payload, r#"{"csr":"AQID"}"#);
    o.handle(reply(200, "n8", None, json!({"status": "processing"})));
    assert_eq!(o.poll(&FakeKey), Step::Wait(Duration::from_secs(1)));
    let (_, url, ..) = sent(o.poll(&FakeKey));
    assert_eq!(url, "https://ca.test/order/1");
    o.handle(reply(
        200,
        "n9",
        None,
        json!({"status": "valid", "certificate": "https://ca.test/cert/1"}),
    ));
    let (_, url, p, _) = sent(o.poll(&FakeKey));
    assert_eq!(url, "https://ca.test/cert/1");
    assert_eq!(p["nonce"], "n9");
    let pem = "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n";
    o.handle(Reply {
        status: 200,
        body: pem.as_bytes().to_vec(),
        ..Reply::default()
    });
    assert_eq!(o.poll(&FakeKey), Step::Done(pem.to_string()));
}

#[test]
fn a_rejected_nonce_is_retried_a_few_times_then_the_order_fails() {
    let mut o = order(vec![ChallengeKind::Http01], None);
    up_to_authorization(&mut o);
    let bad = |n: &str| {
        reply(
            400,
            n,
            None,
            json!({"type": "urn:ietf:params:acme:error:badNonce", "detail": "stale"}),
        )
    };
    for i in 0..5 {
        let (_, url, p, _) = sent(o.poll(&FakeKey));
        assert_eq!(url, "https://ca.test/authz/1");
        if i > 0 {
            assert_eq!(
                p["nonce"],
                format!("bad{}", i - 1),
                "the fresh nonce is used"
            );
        }
        o.handle(bad(&format!("bad{i}")));
    }
    let _ = sent(o.poll(&FakeKey));
    o.handle(bad("bad5"));
    match o.poll(&FakeKey) {
        Step::Failed(why) => assert!(why.contains("400 badNonce: stale"), "{why}"),
        s => panic!("{s:?}"),
    }
}

#[test]
fn problems_fail_the_order_in_the_cas_words() {
    let mut o = order(vec![ChallengeKind::Http01], None);
    let _ = sent(o.poll(&FakeKey));
    let mut r = reply(
        429,
        "n",
        None,
        json!({"type": "urn:ietf:params:acme:error:rateLimited", "detail": "too many certificates"}),
    );
    r.retry_after = Some(Duration::from_secs(3600));
    o.handle(r);
    match o.poll(&FakeKey) {
        Step::Failed(why) => assert_eq!(
            why,
            "the CA answered 429 rateLimited: too many certificates (retry after 3600 s)"
        ),
        s => panic!("{s:?}"),
    }
    // Not a directory.
    let mut o = order(vec![ChallengeKind::Http01], None);
    let _ = sent(o.poll(&FakeKey));
    o.handle(reply(200, "n", None, json!({"hello": 1})));
    assert!(matches!(o.poll(&FakeKey), Step::Failed(w) if w.contains("not an ACME directory")));
    // A network failure.
    let mut o = order(vec![ChallengeKind::Http01], None);
    let _ = sent(o.poll(&FakeKey));
    o.handle_failure("connection refused".into());
    assert_eq!(o.poll(&FakeKey), Step::Failed("connection refused".into()));
}

#[test]
fn an_invalid_authorization_fails_with_the_validation_error() {
    let mut o = order(vec![ChallengeKind::Http01], None);
    up_to_authorization(&mut o);
    let _ = sent(o.poll(&FakeKey));
    o.handle(reply(200, "n", None, authz("invalid", json!([
        {"type": "http-01", "url": "u", "token": "t", "status": "invalid",
         "error": {"type": "urn:ietf:params:acme:error:connection", "detail": "connection refused"}}
    ]))));
    match o.poll(&FakeKey) {
        Step::Failed(why) => assert_eq!(
            why,
            "a.test: the authorization is invalid: connection refused"
        ),
        s => panic!("{s:?}"),
    }
}

#[test]
fn challenge_kinds_follow_the_preference_and_what_is_offered() {
    let offered = json!([
        {"type": "tls-alpn-01", "url": "https://ca.test/ch/t", "token": "tokT", "status": "pending"},
        {"type": "http-01", "url": "https://ca.test/ch/h", "token": "tokH", "status": "pending"}
    ]);
    for (kinds, want) in [
        (
            vec![ChallengeKind::TlsAlpn01, ChallengeKind::Http01],
            ChallengeKind::TlsAlpn01,
        ),
        (vec![ChallengeKind::Http01], ChallengeKind::Http01),
    ] {
        let mut o = order(kinds, None);
        up_to_authorization(&mut o);
        let _ = sent(o.poll(&FakeKey));
        o.handle(reply(200, "n", None, authz("pending", offered.clone())));
        assert!(matches!(o.poll(&FakeKey), Step::Publish(c) if c.kind == want));
    }
    // Only DNS-01: nothing ringway can answer, said so.
    let mut o = order(vec![ChallengeKind::Http01], None);
    up_to_authorization(&mut o);
    let _ = sent(o.poll(&FakeKey));
    o.handle(reply(
        200,
        "n",
        None,
        authz(
            "pending",
            json!([
                {"type": "dns-01", "url": "u", "token": "t", "status": "pending"}
            ]),
        ),
    ));
    assert!(matches!(o.poll(&FakeKey), Step::Failed(w) if w.contains("[\"dns-01\"]")));
    // A token that is not base64url is never published (it would be a path).
    let mut o = order(vec![ChallengeKind::Http01], None);
    up_to_authorization(&mut o);
    let _ = sent(o.poll(&FakeKey));
    o.handle(reply(
        200,
        "n",
        None,
        authz(
            "pending",
            json!([
                {"type": "http-01", "url": "u", "token": "../../etc", "status": "pending"}
            ]),
        ),
    ));
    assert!(matches!(o.poll(&FakeKey), Step::Failed(w) if w.contains("not base64url")));
}

#[test]
fn a_renewal_names_what_it_replaces_unless_the_ca_refuses_it() {
    let mut o = order(vec![ChallengeKind::Http01], Some("aki.serial"));
    let _ = sent(o.poll(&FakeKey));
    o.handle(Reply {
        status: 200,
        body: json!({"newNonce": "n", "newAccount": "a", "newOrder": "o"})
            .to_string()
            .into_bytes(),
        ..Reply::default()
    });
    let _ = sent(o.poll(&FakeKey)); // nonce
    o.handle(reply(200, "n1", None, Value::Null));
    let _ = sent(o.poll(&FakeKey)); // account
    o.handle(reply(200, "n2", Some("acct"), json!({"status": "valid"})));
    let (_, _, _, payload) = sent(o.poll(&FakeKey));
    assert!(payload.contains(r#""replaces":"aki.serial""#), "{payload}");
    o.handle(reply(
        409,
        "n3",
        None,
        json!({"type": "urn:ietf:params:acme:error:alreadyReplaced", "detail": "x"}),
    ));
    let (_, url, _, payload) = sent(o.poll(&FakeKey));
    assert_eq!(url, "o");
    assert!(!payload.contains("replaces"), "{payload}");
}

#[test]
fn replies_are_read_in_every_framing() {
    let r = Reply::parse(
        b"HTTP/1.1 201 Created\r\nReplay-Nonce: abc\r\nLocation: https://ca/o/1\r\nRetry-After: 7\r\nContent-Length: 2\r\n\r\n{}",
        Method::Post,
    )
    .unwrap();
    assert_eq!(r.status, 201);
    assert_eq!(r.nonce.as_deref(), Some("abc"));
    assert_eq!(r.location.as_deref(), Some("https://ca/o/1"));
    assert_eq!(r.retry_after, Some(Duration::from_secs(7)));
    assert_eq!(r.body, b"{}");
    let r = Reply::parse(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        Method::Get,
    )
    .unwrap();
    assert_eq!(r.body, b"abcde");
    let r = Reply::parse(b"HTTP/1.1 200 OK\r\n\r\nuntil close", Method::Get).unwrap();
    assert_eq!(r.body, b"until close");
    let r = Reply::parse(
        b"HTTP/1.1 200 OK\r\nReplay-Nonce: n\r\nContent-Length: 9\r\n\r\n",
        Method::Head,
    )
    .unwrap();
    assert!(r.body.is_empty());
    assert!(Reply::parse(
        b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab",
        Method::Get
    )
    .is_err());
    assert!(Reply::parse(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab",
        Method::Get
    )
    .is_err());
    assert!(Reply::parse(b"HTTP/1.1 200 OK\r\nX: y", Method::Get).is_err());
    assert!(Reply::parse(b"garbage\r\n\r\n", Method::Get).is_err());
}

#[test]
fn urls_are_https_only() {
    assert_eq!(
        Url::parse("https://acme-v02.api.letsencrypt.org/directory").unwrap(),
        Url {
            host: "acme-v02.api.letsencrypt.org".into(),
            port: 443,
            path: "/directory".into()
        }
    );
    let u = Url::parse("https://127.0.0.1:14000/dir").unwrap();
    assert_eq!(
        (u.host.as_str(), u.port, u.path.as_str()),
        ("127.0.0.1", 14000, "/dir")
    );
    let u = Url::parse("https://[::1]:8443").unwrap();
    assert_eq!(
        (u.host.as_str(), u.port, u.path.as_str()),
        ("::1", 8443, "/")
    );
    for bad in [
        "http://ca.test/dir",
        "https://",
        "https://:443/x",
        "https://user@ca.test/",
        "https://ca.test:0/",
        "https://ca.test:99999/",
        "https://ca.test/a b",
    ] {
        assert!(Url::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn renewal_time_comes_from_the_window_or_a_third_of_the_lifetime() {
    let v = Validity {
        not_before: 1_000,
        not_after: 1_000 + 90 * 86_400,
    };
    assert_eq!(v.renew_at(None, 0.5), 1_000 + 60 * 86_400);
    let w = Window {
        start: 5_000,
        end: 6_000,
    };
    assert_eq!(v.renew_at(Some(w), 0.0), 5_000);
    assert_eq!(v.renew_at(Some(w), 0.25), 5_250);
    assert_eq!(v.renew_at(Some(w), 7.0), 6_000);
    assert!(v.valid_at(2_000));
    assert!(!v.valid_at(999));
    assert!(!v.valid_at(1_000 + 90 * 86_400));
    // RFC 9773 §4.1's example: keyIdentifier 69:88:5B:6B:87:46:40:41:E1:B3:7B:84:7B:A0:AE:2C:
    // DE:01:C8:D4, serial 00:87:65:43:21.
    let aki = [
        0x69, 0x88, 0x5B, 0x6B, 0x87, 0x46, 0x40, 0x41, 0xE1, 0xB3, 0x7B, 0x84, 0x7B, 0xA0, 0xAE,
        0x2C, 0xDE, 0x01, 0xC8, 0xD4,
    ];
    assert_eq!(
        cert_id(&aki, &[0x00, 0x87, 0x65, 0x43, 0x21]),
        "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"
    );
    let w = parse_window(
        br#"{"suggestedWindow":{"start":"2025-01-02T04:00:00Z","end":"2025-01-03T04:00:00Z"},"explanationURL":"x"}"#,
    )
    .unwrap();
    assert_eq!(w.end - w.start, 86_400);
    assert_eq!(w.start, 1_735_790_400);
    assert!(parse_window(
        br#"{"suggestedWindow":{"start":"2025-01-03T04:00:00Z","end":"2025-01-02T04:00:00Z"}}"#
    )
    .is_none());
    assert!(parse_window(b"{}").is_none());
}

#[test]
fn rfc3339_times() {
    assert_eq!(rfc3339("1970-01-01T00:00:00Z"), Some(0));
    assert_eq!(rfc3339("2026-12-03T21:00:00Z"), Some(1_796_331_600));
    assert_eq!(rfc3339("2026-12-03T21:00:00.123456Z"), Some(1_796_331_600));
    assert_eq!(rfc3339("2026-12-03T23:00:00+02:00"), Some(1_796_331_600));
    assert_eq!(rfc3339("2024-02-29T00:00:00Z"), Some(1_709_164_800));
    for bad in [
        "",
        "2026-12-03",
        "2026-13-03T21:00:00Z",
        "2026-12-03T25:00:00Z",
        "2026-12-03T21:00:00",
        "2026-12-03T21:00:00.Z",
        "2026-12-03T21:00:00+0200",
        "1969-12-31T23:59:59Z",
        "2026-1a-03T21:00:00Z",
    ] {
        assert_eq!(rfc3339(bad), None, "{bad}");
    }
}

#[test]
fn backoff_doubles_to_its_ceiling_and_resets() {
    let mut b = Backoff::new(Duration::from_secs(60), Duration::from_secs(3600));
    let waits: Vec<u64> = (0..8).map(|_| b.failed().as_secs()).collect();
    assert_eq!(waits, [60, 120, 240, 480, 960, 1920, 3600, 3600]);
    b.succeeded();
    assert_eq!(b.failed().as_secs(), 60);
}

#[test]
fn http01_tokens_are_one_base64url_segment() {
    assert_eq!(
        challenge_token(b"/.well-known/acme-challenge/abc_DEF-123"),
        Some("abc_DEF-123")
    );
    for bad in [
        &b"/.well-known/acme-challenge/"[..],
        b"/.well-known/acme-challenge/a/b",
        b"/.well-known/acme-challenge/..",
        b"/.well-known/acme-challenge/a%2Fb",
        b"/.well-known/acme-challenge/a.b",
        b"/.well-known/acme-challengeX",
        b"/other",
    ] {
        assert_eq!(
            challenge_token(bad),
            None,
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn jwk_thumbprints_follow_rfc_7638() {
    // RFC 7638 §3.1's example key and thumbprint.
    let jwk = r#"{"kty":"RSA","n":"0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw","e":"AQAB","alg":"RS256","kid":"2011-04-29"}"#;
    assert_eq!(
        order::thumbprint(jwk),
        "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    );
    assert_eq!(b64(tls_alpn_digest("t.x")).len(), 43);
}

#[test]
fn pem_and_directory_helpers() {
    let p = pem("CERTIFICATE", &[0u8; 100]);
    assert!(p.starts_with("-----BEGIN CERTIFICATE-----\nAAAA"));
    assert!(p.ends_with("\n-----END CERTIFICATE-----\n"));
    assert!(p.lines().all(|l| l.len() <= 64));
    assert_eq!(
        renewal_info_url(br#"{"newNonce":"x","renewalInfo":"https://ca.test/ari/"}"#).as_deref(),
        Some("https://ca.test/ari")
    );
    assert_eq!(renewal_info_url(br#"{"newNonce":"x"}"#), None);
}
