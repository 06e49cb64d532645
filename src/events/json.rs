//! The event hot path's JSON writer: keys are literals, strings are escaped run by run, numbers
//! come from `itoa`, timestamps reuse the calendar part within a second. Its output is the same,
//! byte for byte, as serde_json's for the same value (the event tests compare the two).

use std::cell::Cell;
use std::io::Write;
use std::time::{Duration, UNIX_EPOCH};

/// `,"<key>":` (or `{"<key>":` with `open`), the key a literal: keys need no escaping.
macro_rules! key {
    ($out:expr, $k:literal) => {
        $out.extend_from_slice(concat!(",\"", $k, "\":").as_bytes())
    };
    ($out:expr, open $k:literal) => {
        $out.extend_from_slice(concat!("{\"", $k, "\":").as_bytes())
    };
}
pub(crate) use key;

/// Bytes serde_json escapes: the control characters, `"` and `\`. Nothing else is (not DEL,
/// not non-ASCII: the output is UTF-8).
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// `s` as a JSON string: quoted, escaped as serde_json escapes it.
pub fn str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !needs_escape(b) {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\r' => out.extend_from_slice(b"\\r"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]),
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

pub fn uint(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

pub fn int(out: &mut Vec<u8>, n: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

pub fn bool(out: &mut Vec<u8>, b: bool) {
    out.extend_from_slice(if b { b"true" } else { b"false" });
}

/// `"YYYY-MM-DDTHH:MM:SS` for one second, kept from the last call: events come in bursts
/// within the same second, and the calendar arithmetic is most of a timestamp's cost.
struct Second {
    secs: u64,
    text: [u8; 20],
}

thread_local! {
    static LAST_SECOND: Cell<Option<Second>> = const { Cell::new(None) };
}

/// `ns` since the Unix epoch as a JSON string in RFC 3339 UTC with nanoseconds
/// (`"2023-11-14T22:13:20.000000123Z"`). The calendar part comes from humantime.
pub fn timestamp(out: &mut Vec<u8>, ns: u64) {
    let secs = ns / 1_000_000_000;
    let mut nanos = ns % 1_000_000_000;
    let second = match LAST_SECOND.take() {
        Some(s) if s.secs == secs => s,
        _ => {
            let mut text = *b"\"0000-00-00T00:00:00";
            let when = UNIX_EPOCH + Duration::from_secs(secs);
            // "YYYY-MM-DDTHH:MM:SSZ" is 20 bytes: the first 19 go after the quote. A u64 of ns
            // ends in 2554, so the year always has four digits.
            let mut rest = &mut text[1..];
            let _ = write!(rest, "{}", humantime::format_rfc3339_seconds(when));
            Second { secs, text }
        }
    };
    out.extend_from_slice(&second.text);
    LAST_SECOND.set(Some(second));
    let mut frac = *b".000000000Z\"";
    for d in frac[1..10].iter_mut().rev() {
        *d = b'0' + (nanos % 10) as u8;
        nanos /= 10;
    }
    out.extend_from_slice(&frac);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn via<T: ?Sized>(f: fn(&mut Vec<u8>, &T), v: &T) -> String {
        let mut out = Vec::new();
        f(&mut out, v);
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn strings_escape_exactly_as_serde_json_does() {
        let mut every_byte = String::new();
        for c in 0u8..=0x7f {
            every_byte.push(char::from(c));
        }
        for s in [
            "",
            "plain",
            "q\"b\\s",
            "\u{1}\n\t\r\u{8}\u{c}\u{1f}\u{7f}",
            "é€😀/x",
            "\"",
            "\\",
            "end\n",
            &every_byte,
        ] {
            let want = serde_json::to_string(s).expect("serialize");
            assert_eq!(via(str, s), want, "{s:?}");
        }
    }

    #[test]
    fn numbers_and_bools() {
        for n in [0, 1, 9, 10, 4_026_531_836, u64::MAX] {
            assert_eq!(via(|o, n| uint(o, *n), &n), n.to_string());
        }
        for n in [0, -1, -115, i64::MIN, i64::MAX] {
            assert_eq!(via(|o, n| int(o, *n), &n), n.to_string());
        }
        assert_eq!(via(|o, b| bool(o, *b), &true), "true");
        assert_eq!(via(|o, b| bool(o, *b), &false), "false");
    }

    #[test]
    fn timestamps_match_humantime_across_seconds_and_the_cache() {
        // Padding, leap days, century rules, the same second twice, then a step back.
        let vectors = [
            (0, 0),
            (951_782_400, 1),
            (1_709_251_199, 999_999_999),
            (1_709_251_199, 5),
            (1_709_251_200, 10),
            (4_107_542_400, 120_000_000),
            (1_700_000_000, 123_456),
            (u64::MAX / 1_000_000_000, u64::MAX % 1_000_000_000),
        ];
        for (secs, nanos) in vectors {
            let ns = secs * 1_000_000_000 + nanos;
            let want = humantime::format_rfc3339_nanos(UNIX_EPOCH + Duration::from_nanos(ns));
            assert_eq!(via(|o, n| timestamp(o, *n), &ns), format!("\"{want}\""));
        }
    }
}
