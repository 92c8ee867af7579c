//! Any first bytes of a connection read as a PROXY header: nothing may panic, a header never
//! claims more bytes than it was given, every prefix of accepted input is Partial or the same
//! answer, and a v2 header built from the addresses found parses back to them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringway_core::proxyproto::{parse, v2_header, Parsed};

fuzz_target!(|data: &[u8]| {
    // The input alone, and after a v2 signature so that v2 bodies are reached often.
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2.extend_from_slice(data);
    for buf in [data, &v2[..]] {
        match parse(buf) {
            Parsed::Header { len, header } => {
                assert!(len <= buf.len());
                assert_eq!(
                    parse(&buf[..len]),
                    Parsed::Header {
                        len,
                        header: header.clone()
                    }
                );
                if let (Some(s), Some(d)) = (header.source, header.destination) {
                    let again = v2_header(s, d, &[]);
                    assert!(matches!(parse(&again), Parsed::Header { header: h, .. } if h.source == Some(s)));
                }
            }
            Parsed::Partial | Parsed::Absent | Parsed::Invalid(_) => {}
        }
    }
});
