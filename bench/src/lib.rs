//! Criterion micro-benchmarks for ringway-core; see `benches/`. Fixtures shared by the benches
//! live here.

/// A short request.
pub const SHORT: &[u8] = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n";

/// A typical browser request (Firefox navigating to a page).
pub const BROWSER: &[u8] = b"GET /wp-content/uploads/2010/03/hello-kitty-darth-vader-pink.jpg HTTP/1.1\r\n\
Host: www.kittyhell.com\r\n\
User-Agent: Mozilla/5.0 (Macintosh; U; Intel Mac OS X 10_6_3; ja-JP-mac; rv:1.9.2.3) Gecko/20100401 Firefox/3.6.3 Pathtraq/0.9\r\n\
Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n\
Accept-Language: ja,en-us;q=0.7,en;q=0.3\r\n\
Accept-Encoding: gzip,deflate\r\n\
Accept-Charset: Shift_JIS,utf-8;q=0.7,*;q=0.7\r\n\
Keep-Alive: 115\r\n\
Connection: keep-alive\r\n\
Cookie: wp_ozh_wsa_visits=2; wp_ozh_wsa_visit_lasttime=xxxxxxxxxx; __utma=xxxxxxxxx.xxxxxxxxxx.xxxxxxxxxx.xxxxxxxxxx.xxxxxxxxxx.x; __utmz=xxxxxxxxx.xxxxxxxxxx.x.x.utmccn=(referral)|utmcsr=reader.livedoor.com|utmcct=/reader/|utmcmd=referral\r\n\r\n";

/// A request with 32 header fields.
pub fn many_headers() -> Vec<u8> {
    let mut v = b"POST /api/v2/orders?expand=items HTTP/1.1\r\nHost: api.example.com\r\n".to_vec();
    for i in 0..31 {
        v.extend_from_slice(
            format!("X-Custom-Header-{i:02}: value-{i}-abcdefghijklmnopqrstuvwxyz\r\n").as_bytes(),
        );
    }
    v.extend_from_slice(b"\r\n");
    v
}

/// A typical response head.
pub const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nDate: Tue, 24 Nov 2026 00:00:00 GMT\r\nServer: nginx/1.22.1\r\n\
Content-Type: text/html; charset=utf-8\r\nContent-Length: 1234\r\nLast-Modified: Mon, 23 Nov 2026 10:00:00 GMT\r\n\
Connection: keep-alive\r\nETag: \"5f3e-4d2\"\r\nCache-Control: max-age=3600\r\nAccept-Ranges: bytes\r\n\r\n";
