//! The access log's lines: one per exchange, written from its [`EndRecord`] and what io knows
//! about the connection ([`Entry`]). Formats: nginx's `combined` (the default), `json` (one
//! object per line), or a format string with nginx-style `$variables`. Everything a client sent
//! is escaped (`\xHH` in text formats, JSON escapes in `json`), so a hostile request line or
//! `User-Agent` cannot forge a line of its own. Writing the lines out is io's job.

use std::fmt::Write as _;
use std::net::SocketAddr;

use crate::proxy::{EndRecord, Text};

/// How lines look.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line with every field.
    Json,
    /// Literal text and variables.
    Custom(Vec<Piece>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    Lit(String),
    Var(Var),
}

/// The variables a format string may use (nginx's names where nginx has one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Var {
    RemoteAddr,
    RemotePort,
    RemoteUser,
    TimeLocal,
    TimeIso8601,
    Msec,
    Request,
    RequestMethod,
    RequestUri,
    ServerProtocol,
    Host,
    Status,
    RequestLength,
    BodyBytesSent,
    HttpReferer,
    HttpUserAgent,
    RequestTime,
    UpstreamAddr,
    UpstreamConnectTime,
    UpstreamHeaderTime,
    UpstreamResponseTime,
    UpstreamCacheStatus,
    SslProtocol,
    SslServerName,
    Route,
    ForwardDest,
    Worker,
    RequestId,
    Error,
    Listener,
}

const VARS: &[(&str, Var)] = &[
    ("remote_addr", Var::RemoteAddr),
    ("remote_port", Var::RemotePort),
    ("remote_user", Var::RemoteUser),
    ("time_local", Var::TimeLocal),
    ("time_iso8601", Var::TimeIso8601),
    ("msec", Var::Msec),
    ("request", Var::Request),
    ("request_method", Var::RequestMethod),
    ("request_uri", Var::RequestUri),
    ("server_protocol", Var::ServerProtocol),
    ("host", Var::Host),
    ("status", Var::Status),
    ("request_length", Var::RequestLength),
    ("body_bytes_sent", Var::BodyBytesSent),
    ("http_referer", Var::HttpReferer),
    ("http_user_agent", Var::HttpUserAgent),
    ("request_time", Var::RequestTime),
    ("upstream_addr", Var::UpstreamAddr),
    ("upstream_connect_time", Var::UpstreamConnectTime),
    ("upstream_header_time", Var::UpstreamHeaderTime),
    ("upstream_response_time", Var::UpstreamResponseTime),
    ("upstream_cache_status", Var::UpstreamCacheStatus),
    ("ssl_protocol", Var::SslProtocol),
    ("ssl_server_name", Var::SslServerName),
    ("route", Var::Route),
    ("forward_dest", Var::ForwardDest),
    ("worker", Var::Worker),
    ("request_id", Var::RequestId),
    ("error", Var::Error),
    ("listener", Var::Listener),
];

/// nginx's `combined` (the default), spelled as a format string.
pub const COMBINED: &str = "$remote_addr - $remote_user [$time_local] \"$request\" $status $body_bytes_sent \"$http_referer\" \"$http_user_agent\"";

impl Format {
    /// nginx's `combined`.
    pub fn combined() -> Self {
        Self::parse(COMBINED).unwrap_or(Self::Json)
    }

    /// `combined`, `json`, or a format string; an unknown `$variable` is an error naming it.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "combined" => return Self::parse(COMBINED),
            "json" => return Ok(Self::Json),
            _ => {}
        }
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut rest = text;
        while let Some(i) = rest.find('$') {
            lit.push_str(&rest[..i]);
            rest = &rest[i + 1..];
            let (name, after) = if let Some(r) = rest.strip_prefix('{') {
                let end = r
                    .find('}')
                    .ok_or_else(|| "a `${` without its closing `}`".to_string())?;
                (&r[..end], &r[end + 1..])
            } else {
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                (&rest[..end], &rest[end..])
            };
            if name.is_empty() {
                // `$$` or a lone `$` is a dollar sign.
                lit.push('$');
                rest = rest.strip_prefix('$').unwrap_or(rest);
                continue;
            }
            let var = VARS
                .iter()
                .find(|(n, _)| *n == name)
                .map(|&(_, v)| v)
                .ok_or_else(|| {
                    format!(
                        "unknown variable ${name} (known: {})",
                        VARS.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                    )
                })?;
            if !lit.is_empty() {
                pieces.push(Piece::Lit(std::mem::take(&mut lit)));
            }
            pieces.push(Piece::Var(var));
            rest = after;
        }
        lit.push_str(rest);
        if lit.contains(['\n', '\r']) {
            return Err("a line break in the format would split lines".into());
        }
        if !lit.is_empty() {
            pieces.push(Piece::Lit(lit));
        }
        if pieces.is_empty() {
            return Err("an empty format".into());
        }
        Ok(Self::Custom(pieces))
    }

    /// Appends the line for `e`, with its newline, to `out`.
    pub fn write(&self, e: &Entry<'_>, out: &mut Vec<u8>) {
        match self {
            Self::Json => json(e, out),
            Self::Custom(pieces) => {
                for p in pieces {
                    match p {
                        Piece::Lit(s) => out.extend_from_slice(s.as_bytes()),
                        Piece::Var(v) => var(*v, e, Escape::Text, out),
                    }
                }
            }
        }
        out.push(b'\n');
    }
}

/// What io adds to the record for the line: the connection and the moment.
#[derive(Clone, Copy, Debug)]
pub struct Entry<'a> {
    pub rec: &'a EndRecord,
    pub client: SocketAddr,
    /// The listener's address.
    pub listener: SocketAddr,
    /// Milliseconds since the Unix epoch when the exchange ended.
    pub unix_ms: u64,
    pub worker: usize,
    /// Unique per process: the worker's number and its count of logged exchanges.
    pub seq: u64,
    /// TLS version and SNI of the client connection.
    pub tls: Option<(&'a str, Option<&'a str>)>,
    /// The route's name (its host and path).
    pub route: Option<&'a str>,
    /// The upstream address the last attempt went to.
    pub upstream: Option<SocketAddr>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Escape {
    /// `\xHH` for `"`, `\`, controls and bytes above 0x7e (what nginx does); `-` when empty.
    Text,
    /// Inside a JSON string.
    Json,
}

fn var(v: Var, e: &Entry<'_>, esc: Escape, out: &mut Vec<u8>) {
    let r = e.rec;
    let mut s = String::new();
    let text = |t: Text| r.text.get(t);
    let raw: Option<&[u8]> = match v {
        Var::RemoteAddr => {
            let _ = write!(s, "{}", e.client.ip());
            None
        }
        Var::RemotePort => {
            let _ = write!(s, "{}", e.client.port());
            None
        }
        Var::RemoteUser => r.user.as_deref().map(str::as_bytes),
        Var::TimeLocal => {
            time_local(e.unix_ms / 1000, &mut s);
            None
        }
        Var::TimeIso8601 => {
            time_iso(e.unix_ms, &mut s);
            None
        }
        Var::Msec => {
            let _ = write!(s, "{}.{:03}", e.unix_ms / 1000, e.unix_ms % 1000);
            None
        }
        Var::Request => text(Text::Line),
        Var::RequestMethod => text(Text::Line).and_then(|l| l.split(|&b| b == b' ').next()),
        Var::RequestUri => text(Text::Line).and_then(|l| l.split(|&b| b == b' ').nth(1)),
        Var::ServerProtocol => text(Text::Line).and_then(|l| {
            l.rsplit(|&b| b == b' ')
                .next()
                .filter(|p| p.starts_with(b"HTTP/"))
        }),
        Var::Host => text(Text::Host),
        Var::Status => {
            let _ = write!(s, "{}", r.status);
            None
        }
        Var::RequestLength => {
            let _ = write!(s, "{}", r.head_len + r.request_body);
            None
        }
        Var::BodyBytesSent => {
            let _ = write!(s, "{}", r.response_body);
            None
        }
        Var::HttpReferer => text(Text::Referer),
        Var::HttpUserAgent => text(Text::Agent),
        Var::RequestTime => {
            secs(r.duration(), &mut s);
            None
        }
        Var::UpstreamAddr => {
            if let Some(a) = e.upstream {
                let _ = write!(s, "{a}");
            }
            None
        }
        Var::UpstreamConnectTime => {
            secs(between(r.upstream_began, r.upstream_connected), &mut s);
            None
        }
        Var::UpstreamHeaderTime => {
            secs(between(r.upstream_began, r.upstream_head), &mut s);
            None
        }
        Var::UpstreamResponseTime => {
            let end = r.upstream_head.and(r.ended);
            secs(between(r.upstream_began, end), &mut s);
            None
        }
        Var::UpstreamCacheStatus => r.cache_label().map(str::as_bytes),
        Var::SslProtocol => e.tls.map(|t| t.0.as_bytes()),
        Var::SslServerName => e.tls.and_then(|t| t.1).map(str::as_bytes),
        Var::Route => e.route.map(str::as_bytes),
        Var::ForwardDest => text(Text::Dest),
        Var::Worker => {
            let _ = write!(s, "{}", e.worker);
            None
        }
        // The request's own id when ids are on (`[server] request_id`), else one unique in
        // the process: the worker and its count of logged exchanges.
        Var::RequestId => match &r.request_id {
            Some(id) => Some(id.as_bytes()),
            None => {
                let _ = write!(s, "{:04x}{:012x}", e.worker & 0xffff, e.seq);
                None
            }
        },
        Var::Error => {
            if let Some(err) = &r.error {
                let _ = write!(s, "{err}");
            }
            None
        }
        Var::Listener => {
            let _ = write!(s, "{}", e.listener);
            None
        }
    };
    let bytes = raw.unwrap_or(s.as_bytes());
    match esc {
        Escape::Text if bytes.is_empty() => out.push(b'-'),
        Escape::Text => escape_text(bytes, out),
        Escape::Json => escape_json(bytes, out),
    }
}

fn between(
    a: Option<std::time::Instant>,
    b: Option<std::time::Instant>,
) -> Option<std::time::Duration> {
    Some(b?.saturating_duration_since(a?))
}

/// Seconds with milliseconds, like nginx's `$request_time`; nothing when unknown.
fn secs(d: Option<std::time::Duration>, s: &mut String) {
    if let Some(d) = d {
        let ms = d.as_millis();
        let _ = write!(s, "{}.{:03}", ms / 1000, ms % 1000);
    }
}

fn escape_text(b: &[u8], out: &mut Vec<u8>) {
    for &c in b {
        if c == b'"' || c == b'\\' || !(0x20..0x7f).contains(&c) {
            let _ = write!(Hex(out), "\\x{c:02X}");
        } else {
            out.push(c);
        }
    }
}

fn escape_json(b: &[u8], out: &mut Vec<u8>) {
    for &c in b {
        match c {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            // Bytes outside printable ASCII are not assumed to be UTF-8: each is its own
            // escaped code point, so the line is always valid JSON.
            c if !(0x20..0x7f).contains(&c) => {
                let _ = write!(Hex(out), "\\u{:04x}", c);
            }
            c => out.push(c),
        }
    }
}

/// `fmt::Write` into a byte buffer.
struct Hex<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Hex<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

fn json(e: &Entry<'_>, out: &mut Vec<u8>) {
    // Numbers go out as numbers; everything else as strings (absent: null).
    const FIELDS: &[(&str, Var, bool)] = &[
        ("time", Var::TimeIso8601, false),
        ("client", Var::RemoteAddr, false),
        ("client_port", Var::RemotePort, true),
        ("user", Var::RemoteUser, false),
        ("method", Var::RequestMethod, false),
        ("request", Var::Request, false),
        ("host", Var::Host, false),
        ("status", Var::Status, true),
        ("bytes_in", Var::RequestLength, true),
        ("bytes_out", Var::BodyBytesSent, true),
        ("referer", Var::HttpReferer, false),
        ("user_agent", Var::HttpUserAgent, false),
        ("request_time", Var::RequestTime, true),
        ("upstream_addr", Var::UpstreamAddr, false),
        ("upstream_connect_time", Var::UpstreamConnectTime, true),
        ("upstream_header_time", Var::UpstreamHeaderTime, true),
        ("upstream_response_time", Var::UpstreamResponseTime, true),
        ("cache", Var::UpstreamCacheStatus, false),
        ("tls_version", Var::SslProtocol, false),
        ("sni", Var::SslServerName, false),
        ("route", Var::Route, false),
        ("forward_dest", Var::ForwardDest, false),
        ("listener", Var::Listener, false),
        ("worker", Var::Worker, true),
        ("request_id", Var::RequestId, false),
        ("error", Var::Error, false),
    ];
    out.push(b'{');
    let mut val = Vec::with_capacity(64);
    for (i, (name, v, number)) in FIELDS.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
        val.clear();
        var(*v, e, Escape::Json, &mut val);
        if val.is_empty() {
            out.extend_from_slice(b"null");
        } else if *number {
            out.extend_from_slice(&val);
        } else {
            out.push(b'"');
            out.extend_from_slice(&val);
            out.push(b'"');
        }
    }
    out.push(b'}');
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `10/Oct/2000:13:55:36 +0000` (the log is in UTC).
fn time_local(secs: u64, s: &mut String) {
    let (y, m, d) = crate::http::date::civil_from_days(secs / 86_400);
    let t = secs % 86_400;
    let _ = write!(
        s,
        "{d:02}/{}/{y}:{:02}:{:02}:{:02} +0000",
        MONTHS[(m - 1) as usize],
        t / 3600,
        t / 60 % 60,
        t % 60
    );
}

/// `2000-10-10T13:55:36.123Z`.
fn time_iso(ms: u64, s: &mut String) {
    let secs = ms / 1000;
    let (y, m, d) = crate::http::date::civil_from_days(secs / 86_400);
    let t = secs % 86_400;
    let _ = write!(
        s,
        "{y}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        t / 3600,
        t / 60 % 60,
        t % 60,
        ms % 1000
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Method;

    fn entry(rec: &EndRecord) -> Entry<'_> {
        Entry {
            rec,
            client: "192.0.2.7:50123".parse().unwrap(),
            listener: "127.0.0.1:8080".parse().unwrap(),
            unix_ms: 971_186_136_123,
            worker: 1,
            seq: 42,
            tls: None,
            route: Some("/"),
            upstream: Some("127.0.0.1:9000".parse().unwrap()),
        }
    }

    fn record() -> EndRecord {
        let mut r = EndRecord {
            method: Some(Method::Get),
            status: 200,
            response_body: 2326,
            ..EndRecord::default()
        };
        r.text.put(Text::Line, b"GET /apache_pb.gif HTTP/1.0");
        r.text
            .put(Text::Referer, b"http://www.example.com/start.html");
        r.text
            .put(Text::Agent, b"Mozilla/4.08 [en] (Win98; I ;Nav)");
        r
    }

    fn line(f: &Format, r: &EndRecord) -> String {
        let mut out = Vec::new();
        f.write(&entry(r), &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn combined_is_nginx_combined() {
        assert_eq!(
            line(&Format::combined(), &record()),
            "192.0.2.7 - - [10/Oct/2000:13:55:36 +0000] \"GET /apache_pb.gif HTTP/1.0\" 200 2326 \"http://www.example.com/start.html\" \"Mozilla/4.08 [en] (Win98; I ;Nav)\"\n"
        );
    }

    #[test]
    fn hostile_bytes_are_escaped_and_cannot_start_a_line() {
        let mut r = record();
        r.text.put(
            Text::Agent,
            b"x\"\n1.2.3.4 - - [forged] \"GET / HTTP/1.1\" 200\xff\\",
        );
        let l = line(&Format::combined(), &r);
        assert_eq!(l.matches('\n').count(), 1);
        assert!(
            l.contains(
                "\"x\\x22\\x0A1.2.3.4 - - [forged] \\x22GET / HTTP/1.1\\x22 200\\xFF\\x5C\""
            ),
            "{l}"
        );
        let j = line(&Format::Json, &r);
        assert_eq!(j.matches('\n').count(), 1);
        assert!(j.contains(r#""user_agent":"x\"\u000a1.2.3.4"#), "{j}");
        assert!(j.contains(r#"200\u00ff\\""#), "{j}");
    }

    #[test]
    fn json_has_every_field_typed() {
        let j = line(&Format::Json, &record());
        assert!(j.starts_with("{\"time\":\"2000-10-10T13:55:36.123Z\",\"client\":\"192.0.2.7\",\"client_port\":50123,\"user\":null,\"method\":\"GET\""), "{j}");
        assert!(j.contains("\"status\":200,"), "{j}");
        assert!(j.contains("\"upstream_addr\":\"127.0.0.1:9000\""), "{j}");
        assert!(j.contains("\"request_id\":\"000100000000002a\""), "{j}");
        assert!(j.ends_with("\"error\":null}\n"), "{j}");
    }

    #[test]
    fn format_strings() {
        let f = Format::parse(
            "$remote_addr ${status}x $$ $request_uri $server_protocol $request_method",
        )
        .unwrap();
        assert_eq!(
            line(&f, &record()),
            "192.0.2.7 200x $ /apache_pb.gif HTTP/1.0 GET\n"
        );
        assert!(Format::parse("$nope")
            .unwrap_err()
            .starts_with("unknown variable $nope"));
        assert!(Format::parse("${status").is_err());
        assert!(Format::parse("a\nb").is_err());
        assert!(Format::parse("").is_err());
        // Absent values are `-` in text formats.
        let f = Format::parse("$remote_user|$upstream_cache_status|$ssl_protocol").unwrap();
        assert_eq!(line(&f, &record()), "-|-|-\n");
    }
}
