//! The socket's request line: framing (one `\n`-terminated line of at most [`MAX_REQUEST`]
//! bytes) and parsing (`{"request":"attest-self"}` or `{"request":"status"}`). Self-contained
//! (std and serde_json only) so the fuzz target can include it.

use serde_json::Value;

/// A request line (without its `\n`) longer than this is refused.
pub const MAX_REQUEST: usize = 4096;

/// The answer to a line over [`MAX_REQUEST`] bytes.
pub const TOO_LONG: &str = "request too long (at most 4096 bytes on one line)";

/// What a caller asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    AttestSelf,
    Status,
}

impl Request {
    pub fn name(self) -> &'static str {
        match self {
            Request::AttestSelf => "attest-self",
            Request::Status => "status",
        }
    }
}

/// What the bytes received so far amount to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line<'a> {
    /// No `\n` yet, and not over the limit: read more.
    Partial,
    /// The request line, without its `\n` (at most [`MAX_REQUEST`] bytes).
    Complete(&'a [u8]),
    /// The line is longer than [`MAX_REQUEST`] bytes: answer [`TOO_LONG`].
    TooLong,
}

/// Frames the bytes received so far (everything read from the connection, in order).
pub fn frame(received: &[u8]) -> Line<'_> {
    match received.iter().position(|b| *b == b'\n') {
        Some(end) if end <= MAX_REQUEST => Line::Complete(&received[..end]),
        Some(_) => Line::TooLong,
        None if received.len() > MAX_REQUEST => Line::TooLong,
        None => Line::Partial,
    }
}

/// Parses one request line (without its `\n`); the error is the one-line reason to answer.
pub fn parse_request(raw: &[u8]) -> Result<Request, String> {
    if raw.len() > MAX_REQUEST {
        return Err(TOO_LONG.into());
    }
    let v: Value = serde_json::from_slice(raw).map_err(|_| {
        "expected one JSON object per line, such as {\"request\":\"status\"}".to_string()
    })?;
    match v.get("request").and_then(Value::as_str) {
        Some("attest-self") => Ok(Request::AttestSelf),
        Some("status") => Ok(Request::Status),
        Some(other) => Err(format!(
            "unknown request {:?}; requests: attest-self, status",
            other.chars().take(64).collect::<String>()
        )),
        None => Err("missing \"request\" (attest-self or status)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_parsing() {
        assert_eq!(
            parse_request(br#"{"request":"status"}"#),
            Ok(Request::Status)
        );
        assert_eq!(
            parse_request(br#"{"request":"attest-self"}"#),
            Ok(Request::AttestSelf)
        );
        assert!(parse_request(b"").is_err());
        assert!(parse_request(br#"{"request":"attest","pid":1}"#).is_err());
        assert!(parse_request(b"\xff\xfe").is_err());
    }

    #[test]
    fn framing_counts_the_line_without_its_newline() {
        let line = |n: usize| {
            let mut v = vec![b' '; n];
            v.push(b'\n');
            v
        };
        assert_eq!(frame(b"{}"), Line::Partial);
        assert_eq!(frame(b"{}\nrest"), Line::Complete(b"{}"));
        assert_eq!(frame(&line(4096)), Line::Complete(&[b' '; 4096][..]));
        assert_eq!(frame(&line(4097)), Line::TooLong);
        assert_eq!(frame(&line(5000)), Line::TooLong);
        assert_eq!(frame(&[b'x'; 4096]), Line::Partial);
        assert_eq!(frame(&[b'x'; 4097]), Line::TooLong);
    }
}
