//! Fuzz target: parsing a DNS question from arbitrary bytes sent to port 53 never panics, and
//! an answer is consistent with its input.
#![no_main]

#[allow(dead_code)]
#[path = "../../src/sensor/dns.rs"]
mod dns;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(q) = dns::parse(data) {
        // A question needs a header, a name (at least the root's zero byte) and type + class.
        assert!(data.len() >= 12 + 1 + 4);
        assert_eq!(q.id, u16::from_be_bytes([data[0], data[1]]));
        assert!(!q.name.is_empty());
        // Escaped, the name is printable ASCII.
        assert!(q.name.bytes().all(|b| b.is_ascii_graphic()), "{:?}", q.name);
        let _ = (dns::type_name(q.qtype), dns::class_name(q.qclass), dns::opcode_name(q.opcode));
    }
});
