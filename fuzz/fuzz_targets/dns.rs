//! Any datagram read as the answer to a query: nothing may panic, compression pointers may not
//! loop, and an accepted answer only holds addresses of the type asked.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringway_core::dns::{answer, query, Answer, Qtype};

fuzz_target!(|data: &[u8]| {
    for (qtype, name) in [(Qtype::A, "a.test"), (Qtype::Aaaa, "www.example.test")] {
        // The fuzz input after a real header and question, so answers are reached often.
        let mut msg = Vec::new();
        query(0x4242, name, qtype, &mut msg).unwrap();
        msg[2] = 0x81;
        msg[3] = 0x80;
        msg[7] = data.first().copied().unwrap_or(0) % 8;
        msg.extend_from_slice(data.get(1..).unwrap_or(&[]));
        for m in [&msg[..], data] {
            if let Ok(Answer::Addresses(ips, _)) = answer(m, 0x4242, name, qtype) {
                assert!(ips
                    .iter()
                    .all(|ip| ip.is_ipv4() == matches!(qtype, Qtype::A)));
            }
        }
    }
});
