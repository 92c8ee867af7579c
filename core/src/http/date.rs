//! The `Date` header (RFC 9110 §6.6.1): ringway adds one to every response it writes itself and
//! to every forwarded response that lacks one ("a recipient with a clock … MUST … append" it).
//! Time comes in as an argument: io formats the line once per second per worker.

/// A complete `Date: <IMF-fixdate>\r\n` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DateLine {
    bytes: [u8; Self::LEN],
    /// The second it was formatted for.
    secs: u64,
}

const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

impl DateLine {
    /// `Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n`
    pub const LEN: usize = 37;

    /// The line for `secs` seconds after the Unix epoch (UTC).
    pub fn at(secs: u64) -> Self {
        let days = secs / 86_400;
        let rem = secs % 86_400;
        let (y, m, d) = civil_from_days(days);
        let mut b = *b"Date: Thu, 01 Jan 1970 00:00:00 GMT\r\n";
        b[6..9].copy_from_slice(DAYS[(days % 7) as usize]);
        two(&mut b[11..13], d);
        b[14..17].copy_from_slice(MONTHS[(m - 1) as usize]);
        let y = y.min(9999);
        two(&mut b[18..20], y / 100);
        two(&mut b[20..22], y % 100);
        two(&mut b[23..25], rem / 3600);
        two(&mut b[26..28], rem / 60 % 60);
        two(&mut b[29..31], rem % 60);
        Self { bytes: b, secs }
    }

    pub fn secs(&self) -> u64 {
        self.secs
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// `2026-12-03 12:17:59 UTC`: a moment for people to read (logs, `ringway versions`).
pub fn utc_text(secs: u64) -> String {
    let (y, m, d) = civil_from_days(secs / 86_400);
    let t = secs % 86_400;
    format!(
        "{y}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        t / 3600,
        t / 60 % 60,
        t % 60
    )
}

fn two(out: &mut [u8], v: u64) {
    out[0] = b'0' + (v / 10 % 10) as u8;
    out[1] = b'0' + (v % 10) as u8;
}

/// (year, month 1–12, day 1–31) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
pub(crate) fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// Parses an HTTP-date (RFC 9110 §5.6.7) into seconds since the Unix epoch: IMF-fixdate
/// (`Sun, 06 Nov 1994 08:49:37 GMT`), and the obsolete RFC 850
/// (`Sunday, 06-Nov-94 08:49:37 GMT`) and asctime (`Sun Nov  6 08:49:37 1994`) forms that
/// recipients must accept. `None` for anything else (callers treat an invalid date as in the
/// past where RFC 9111 says so). The weekday is not checked against the date.
pub fn parse_http_date(v: &[u8]) -> Option<u64> {
    let v = super::trim_ows(v);
    let comma = v.iter().position(|&b| b == b',');
    let (day, month, year, time) = match comma {
        Some(3) if v.len() == 29 => {
            // IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT"
            if &v[25..] != b" GMT" || v[4] != b' ' || v[7] != b' ' || v[11] != b' ' || v[16] != b' '
            {
                return None;
            }
            (
                num(&v[5..7])?,
                month(&v[8..11])?,
                num(&v[12..16])?,
                &v[17..25],
            )
        }
        Some(i) if i >= 6 => {
            // RFC 850: "Sunday, 06-Nov-94 08:49:37 GMT"
            let r = &v[i + 1..];
            if r.len() != 23
                || r[0] != b' '
                || r[3] != b'-'
                || r[7] != b'-'
                || r[10] != b' '
                || &r[19..] != b" GMT"
            {
                return None;
            }
            // Two-digit years: RFC 9110 §5.6.7, more than 50 years in the future is the past
            // century; with no clock here, 70–99 are 19xx and 00–69 20xx.
            let yy = num(&r[8..10])?;
            let year = if yy >= 70 { 1900 + yy } else { 2000 + yy };
            (num(&r[1..3])?, month(&r[4..7])?, year, &r[11..19])
        }
        None if v.len() == 24 => {
            // asctime: "Sun Nov  6 08:49:37 1994"
            if v[3] != b' ' || v[7] != b' ' || v[10] != b' ' || v[19] != b' ' {
                return None;
            }
            let day = if v[8] == b' ' {
                num(&v[9..10])?
            } else {
                num(&v[8..10])?
            };
            (day, month(&v[4..7])?, num(&v[20..24])?, &v[11..19])
        }
        _ => return None,
    };
    if time[2] != b':' || time[5] != b':' {
        return None;
    }
    let (h, m, s) = (num(&time[0..2])?, num(&time[3..5])?, num(&time[6..8])?);
    // 60 seconds: a leap second, which the epoch count folds into the next minute.
    if !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 || year < 1970 {
        return None;
    }
    let days = days_from_civil(year, month, day)?;
    Some(days * 86_400 + h * 3600 + m * 60 + s)
}

fn num(d: &[u8]) -> Option<u64> {
    if d.is_empty() || !d.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(d.iter().fold(0, |a, &b| a * 10 + u64::from(b - b'0')))
}

fn month(m: &[u8]) -> Option<u64> {
    MONTHS
        .iter()
        .position(|x| &x[..] == m)
        .map(|i| i as u64 + 1)
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm); `None` for a day past the
/// month's end.
fn days_from_civil(y: u64, m: u64, d: u64) -> Option<u64> {
    let leap = y.is_multiple_of(4) && (!y.is_multiple_of(100) || y.is_multiple_of(400));
    let len = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if d > len[(m - 1) as usize] {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).checked_sub(719_468)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> String {
        String::from_utf8(DateLine::at(secs).as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn imf_fixdate() {
        assert_eq!(s(0), "Date: Thu, 01 Jan 1970 00:00:00 GMT\r\n");
        // RFC 9110's example.
        assert_eq!(s(784_111_777), "Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n");
        assert_eq!(s(951_782_400), "Date: Tue, 29 Feb 2000 00:00:00 GMT\r\n");
        assert_eq!(s(1_795_647_599), "Date: Wed, 25 Nov 2026 22:59:59 GMT\r\n");
        assert_eq!(s(4_102_444_800), "Date: Fri, 01 Jan 2100 00:00:00 GMT\r\n");
    }

    #[test]
    fn parses_the_three_forms() {
        let t = Some(784_111_777);
        assert_eq!(parse_http_date(b"Sun, 06 Nov 1994 08:49:37 GMT"), t);
        assert_eq!(parse_http_date(b"Sunday, 06-Nov-94 08:49:37 GMT"), t);
        assert_eq!(parse_http_date(b"Sun Nov  6 08:49:37 1994"), t);
        assert_eq!(parse_http_date(b" Sun, 06 Nov 1994 08:49:37 GMT "), t);
        for secs in [0, 951_782_400, 1_795_647_599, 4_102_444_800] {
            let line = DateLine::at(secs);
            let v = &line.as_bytes()[6..DateLine::LEN - 2];
            assert_eq!(parse_http_date(v), Some(secs));
        }
        for bad in [
            &b"0"[..],
            b"-1",
            b"",
            b"Sun, 06 Nov 1994 08:49:37 UTC",
            b"Sun, 32 Nov 1994 08:49:37 GMT",
            b"Sun, 31 Nov 1994 08:49:37 GMT",
            b"Sun, 06 Nov 1994 24:49:37 GMT",
            b"Sun, 06 Foo 1994 08:49:37 GMT",
            b"Sun, 06 Nov 1994 08:49 GMT",
            b"Thu, 01 Jan 1960 00:00:00 GMT",
            b"Sun, 6 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(
                parse_http_date(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
