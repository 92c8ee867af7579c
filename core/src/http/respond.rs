//! Responses the proxy makes itself: errors and configured fixed responses.

use std::io::Write as _;

use super::date::DateLine;

/// The reason phrase for the status codes the proxy produces (others get an empty phrase).
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        508 => "Loop Detected",
        _ => "",
    }
}

/// What a client is told when the upstream failed: the status, in words, and nothing of the
/// cause (which goes to the log).
pub fn upstream_failure(status: u16) -> &'static str {
    match status {
        504 => "the upstream server did not answer in time",
        503 => "no upstream server is available",
        _ => "the upstream server could not be reached or did not answer validly",
    }
}

/// A complete response with a plain-text body naming the problem, e.g.
/// `502 Bad Gateway: upstream refused the connection`.
pub fn error(status: u16, detail: &str, close: bool, date: &DateLine, out: &mut Vec<u8>) {
    error_with(status, detail, close, b"", date, out);
}

/// Like [`error`], with `extra` header lines (each ending in CRLF) added to the head.
pub fn error_with(
    status: u16,
    detail: &str,
    close: bool,
    extra: &[u8],
    date: &DateLine,
    out: &mut Vec<u8>,
) {
    let r = reason(status);
    let body_len = 3
        + 1
        + r.len()
        + if detail.is_empty() {
            0
        } else {
            2 + detail.len()
        }
        + 1;
    let _ = write!(
        out,
        "HTTP/1.1 {status} {r}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {body_len}\r\n"
    );
    out.extend_from_slice(date.as_bytes());
    out.extend_from_slice(extra);
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    let _ = write!(out, "\r\n{status} {r}");
    if !detail.is_empty() {
        let _ = write!(out, ": {detail}");
    }
    out.push(b'\n');
}

/// A configured fixed response, rendered once at config time except for the connection field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fixed {
    pub status: u16,
    /// Status line and headers, without the final CRLF and without Connection.
    pub head: Vec<u8>,
    pub body: Vec<u8>,
}

impl Fixed {
    pub fn new(status: u16, headers: &[(String, String)], body: &[u8]) -> Self {
        let mut head = Vec::new();
        let _ = write!(head, "HTTP/1.1 {status} {}\r\n", reason(status));
        for (k, v) in headers {
            let _ = write!(head, "{k}: {v}\r\n");
        }
        let bodiless = (100..200).contains(&status) || status == 204 || status == 304;
        if !bodiless {
            let _ = write!(head, "Content-Length: {}\r\n", body.len());
        }
        Self {
            status,
            head,
            body: if bodiless { Vec::new() } else { body.to_vec() },
        }
    }

    /// Appends the full response; `head_only` for HEAD requests.
    pub fn write(
        &self,
        close: bool,
        keep_alive_header: bool,
        head_only: bool,
        date: &DateLine,
        out: &mut Vec<u8>,
    ) {
        out.extend_from_slice(&self.head);
        out.extend_from_slice(date.as_bytes());
        if close {
            out.extend_from_slice(b"Connection: close\r\n");
        } else if keep_alive_header {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !head_only {
            out.extend_from_slice(&self.body);
        }
    }
}

/// The `301` a `redirect_https` listener answers with: `Location: https://HOST[:PORT]TARGET`,
/// where HOST is the request's host without its port, PORT is omitted when it is 443, and
/// TARGET is the request's path and query as received.
pub fn redirect_https(
    host: &[u8],
    port: u16,
    target: &[u8],
    close: bool,
    date: &DateLine,
    out: &mut Vec<u8>,
) {
    let name = if host.first() == Some(&b'[') {
        host.iter()
            .position(|&b| b == b']')
            .map_or(host, |i| &host[..=i])
    } else {
        host.iter()
            .rposition(|&b| b == b':')
            .map_or(host, |i| &host[..i])
    };
    let mut location = Vec::with_capacity(name.len() + target.len() + 40);
    location.extend_from_slice(b"Location: https://");
    location.extend_from_slice(name);
    if port != 443 {
        let _ = write!(location, ":{port}");
    }
    location.extend_from_slice(target);
    location.extend_from_slice(b"\r\n");
    error_with(301, "moved to https", close, &location, date, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    static D: std::sync::LazyLock<DateLine> =
        std::sync::LazyLock::new(|| DateLine::at(784_111_777));

    #[test]
    fn redirect_locations() {
        let l = |h: &str, p, t: &str| {
            let mut out = Vec::new();
            redirect_https(h.as_bytes(), p, t.as_bytes(), false, &D, &mut out);
            let s = String::from_utf8(out).unwrap();
            assert!(s.starts_with("HTTP/1.1 301 Moved Permanently\r\n"), "{s}");
            let loc = s.split("\r\n").find_map(|l| l.strip_prefix("Location: "));
            loc.unwrap().to_string()
        };
        assert_eq!(l("example.com", 443, "/a?b=1"), "https://example.com/a?b=1");
        assert_eq!(l("example.com:8080", 443, "/"), "https://example.com/");
        assert_eq!(
            l("example.com:80", 8443, "/x"),
            "https://example.com:8443/x"
        );
        assert_eq!(l("[::1]:80", 443, "/"), "https://[::1]/");
        assert_eq!(l("[::1]", 8443, "/"), "https://[::1]:8443/");
    }

    #[test]
    fn error_body_length_is_exact() {
        let mut out = Vec::new();
        error(502, "upstream refused the connection", true, &D, &mut out);
        let s = String::from_utf8(out).unwrap();
        let (head, body) = s.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 502 Bad Gateway\r\n"));
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        assert!(head.contains("Connection: close"));
        assert_eq!(body, "502 Bad Gateway: upstream refused the connection\n");
        let mut out = Vec::new();
        error(400, "", false, &D, &mut out);
        let s = String::from_utf8(out).unwrap();
        let (head, body) = s.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
    }

    #[test]
    fn fixed() {
        let f = Fixed::new(
            200,
            &[("Content-Type".into(), "text/plain".into())],
            b"hi\n",
        );
        let mut out = Vec::new();
        f.write(false, false, false, &D, &mut out);
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\nhi\n"
        );
        let mut out = Vec::new();
        f.write(true, false, true, &D, &mut out);
        assert!(out.ends_with(b"Connection: close\r\n\r\n"));
    }
}
