//! Fuzz target: the agent socket's request line. Framing and parsing never panic, whatever the
//! bytes and however they are split into reads; a line over 4,096 bytes is never parsed; a
//! request is only ever the first line, within the limit, naming `status` or `attest-self`.
#![no_main]

#[allow(dead_code)]
#[path = "../../src/serve/request.rs"]
mod request;

use request::{Line, MAX_REQUEST, frame, parse_request};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // The first byte sets the read size (the server reads up to 1,024 bytes at a time).
    let Some((&step, bytes)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1) * 4;
    let mut received = Vec::new();
    for chunk in bytes.chunks(step) {
        received.extend_from_slice(chunk);
        match frame(&received) {
            Line::Partial => {
                assert!(received.len() <= MAX_REQUEST && !received.contains(&b'\n'));
            }
            Line::Complete(line) => {
                assert!(line.len() <= MAX_REQUEST);
                assert!(!line.contains(&b'\n'));
                assert_eq!(received.get(line.len()), Some(&b'\n'));
                if let Ok(req) = parse_request(line) {
                    let v: serde_json::Value = serde_json::from_slice(line).expect("parsed JSON");
                    assert_eq!(v["request"], req.name());
                }
                return;
            }
            Line::TooLong => {
                let end = received.iter().position(|b| *b == b'\n');
                assert!(end.map_or(received.len() > MAX_REQUEST, |e| e > MAX_REQUEST));
                assert!(parse_request(&received).is_err() || received.len() <= MAX_REQUEST);
                return;
            }
        }
    }
});
