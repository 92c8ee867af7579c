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

fn two(out: &mut [u8], v: u64) {
    out[0] = b'0' + (v / 10 % 10) as u8;
    out[1] = b'0' + (v % 10) as u8;
}

/// (year, month 1–12, day 1–31) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
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
}
