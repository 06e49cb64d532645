//! Minimal HTTP/1.1 server side: bounded request parsing (httparse), Content-Length and chunked
//! bodies, keep-alive, and response writing. Never panics on bad input.

use std::io::{self, Read, Write};

/// Largest request head (request line + headers) accepted.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Most headers accepted in one request.
pub const MAX_HEADERS: usize = 64;
/// Largest request body accepted (anything bigger gets 413 and the connection is closed).
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// One parsed request.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// The path without the query string.
    pub path: String,
    /// Header names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// False when the client asked for `Connection: close` (or spoke HTTP/1.0 without keep-alive).
    pub keep_alive: bool,
}

impl Request {
    /// The first header with this (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why no request could be read.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the connection cleanly between requests (or timed out while idle).
    Closed,
    /// Transport error mid-request.
    Io(io::Error),
    /// Malformed request: answer with this status and message, then close.
    Bad(u16, String),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

/// A response to write.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// A JSON response.
    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        Response {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: value.to_string().into_bytes(),
        }
    }

    /// `{"error": msg}` with this status.
    pub fn error(status: u16, msg: &str) -> Response {
        Response::json(status, &serde_json::json!({ "error": msg }))
    }

    pub fn with_header(mut self, name: &str, value: String) -> Response {
        self.headers.push((name.to_string(), value));
        self
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// A connection: the stream plus bytes read past the previous request (pipelining).
pub struct Conn<S> {
    pub stream: S,
    buf: Vec<u8>,
}

impl<S: Read + Write> Conn<S> {
    pub fn new(stream: S) -> Conn<S> {
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Reads more bytes into the buffer; Ok(0) at end of stream.
    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 8192];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads one request (head and body, at most `max_body` body bytes).
    pub fn read_request(&mut self, max_body: usize) -> Result<Request, ReadError> {
        // The head.
        let (head_len, method, path, headers, minor) = loop {
            let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut slots);
            match req.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let method = req.method.unwrap_or_default().to_string();
                    let target = req.path.unwrap_or_default();
                    let path = target.split('?').next().unwrap_or_default().to_string();
                    let minor = req.version.unwrap_or(1);
                    let mut headers = Vec::with_capacity(req.headers.len());
                    for h in req.headers.iter() {
                        let value = std::str::from_utf8(h.value).map_err(|_| {
                            ReadError::Bad(400, format!("header `{}` is not UTF-8", h.name))
                        })?;
                        headers.push((h.name.to_ascii_lowercase(), value.trim().to_string()));
                    }
                    break (n, method, path, headers, minor);
                }
                Ok(httparse::Status::Partial) => {
                    if self.buf.len() > MAX_HEAD_BYTES {
                        return Err(ReadError::Bad(431, "request head too large".into()));
                    }
                }
                Err(httparse::Error::TooManyHeaders) => {
                    return Err(ReadError::Bad(431, "too many request headers".into()));
                }
                Err(e) => {
                    return Err(ReadError::Bad(
                        400,
                        format!("malformed HTTP request head: {e}"),
                    ));
                }
            }
            let was_empty = self.buf.is_empty();
            match self.fill() {
                Ok(0) if was_empty => return Err(ReadError::Closed),
                Ok(0) => {
                    return Err(ReadError::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed mid-request",
                    )));
                }
                Ok(_) => {}
                Err(e)
                    if was_empty
                        && matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                {
                    return Err(ReadError::Closed);
                }
                Err(e) => return Err(ReadError::Io(e)),
            }
        };
        if head_len > MAX_HEAD_BYTES {
            return Err(ReadError::Bad(431, "request head too large".into()));
        }
        self.buf.drain(..head_len);

        fn find<'h>(
            headers: &'h [(String, String)],
            name: &'static str,
        ) -> impl Iterator<Item = &'h (String, String)> {
            headers.iter().filter(move |(k, _)| k == name)
        }
        let connection = find(&headers, "connection")
            .map(|(_, v)| v.to_ascii_lowercase())
            .collect::<Vec<_>>()
            .join(",");
        let keep_alive = if minor == 0 {
            connection.contains("keep-alive")
        } else {
            !connection.contains("close")
        };
        let chunked = match find(&headers, "transfer-encoding").last() {
            None => false,
            Some((_, v)) if v.eq_ignore_ascii_case("chunked") => true,
            Some((_, v)) => {
                return Err(ReadError::Bad(
                    501,
                    format!("unsupported Transfer-Encoding `{v}`"),
                ));
            }
        };
        let lengths: Vec<&String> = find(&headers, "content-length").map(|(_, v)| v).collect();
        if chunked && !lengths.is_empty() {
            return Err(ReadError::Bad(
                400,
                "both Content-Length and Transfer-Encoding given".into(),
            ));
        }
        // curl sends `Expect: 100-continue` for large bodies and waits for this go-ahead
        // (given once the declared length is known to be acceptable).
        let expect_continue =
            find(&headers, "expect").any(|(_, v)| v.eq_ignore_ascii_case("100-continue"));
        let body = if chunked {
            if expect_continue {
                self.continue_100()?;
            }
            self.read_chunked(max_body)?
        } else {
            let len = match lengths.first() {
                None => 0,
                Some(v) => {
                    if lengths.iter().any(|o| o != v) {
                        return Err(ReadError::Bad(400, "conflicting Content-Length".into()));
                    }
                    v.parse::<usize>()
                        .map_err(|_| ReadError::Bad(400, "invalid Content-Length".into()))?
                }
            };
            if len > max_body {
                return Err(ReadError::Bad(
                    413,
                    format!("request body over {max_body} bytes"),
                ));
            }
            if expect_continue && len > 0 {
                self.continue_100()?;
            }
            self.read_exact_body(len)?
        };
        Ok(Request {
            method,
            path,
            headers,
            body,
            keep_alive,
        })
    }

    fn continue_100(&mut self) -> io::Result<()> {
        self.stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        self.stream.flush()
    }

    fn read_exact_body(&mut self, len: usize) -> Result<Vec<u8>, ReadError> {
        while self.buf.len() < len {
            if self.fill()? == 0 {
                return Err(ReadError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed mid-body",
                )));
            }
        }
        Ok(self.buf.drain(..len).collect())
    }

    fn read_chunked(&mut self, max_body: usize) -> Result<Vec<u8>, ReadError> {
        let mut body = Vec::new();
        loop {
            let (consumed, size) = loop {
                match httparse::parse_chunk_size(&self.buf) {
                    Ok(httparse::Status::Complete(v)) => break v,
                    Ok(httparse::Status::Partial) => {
                        if self.buf.len() > 1024 {
                            return Err(ReadError::Bad(400, "invalid chunk size line".into()));
                        }
                        self.need_more()?;
                    }
                    Err(_) => return Err(ReadError::Bad(400, "invalid chunk size".into())),
                }
            };
            self.buf.drain(..consumed);
            let size = usize::try_from(size).unwrap_or(usize::MAX);
            if size == 0 {
                // Trailers (ignored) up to the empty line.
                loop {
                    if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        let empty = pos == 0;
                        self.buf.drain(..pos + 2);
                        if empty {
                            return Ok(body);
                        }
                    } else {
                        if self.buf.len() > MAX_HEAD_BYTES {
                            return Err(ReadError::Bad(400, "chunked trailers too large".into()));
                        }
                        self.need_more()?;
                    }
                }
            }
            if body.len().saturating_add(size) > max_body {
                return Err(ReadError::Bad(
                    413,
                    format!("request body over {max_body} bytes"),
                ));
            }
            while self.buf.len() < size + 2 {
                self.need_more()?;
            }
            if &self.buf[size..size + 2] != b"\r\n" {
                return Err(ReadError::Bad(400, "chunk not terminated by CRLF".into()));
            }
            body.extend_from_slice(&self.buf[..size]);
            self.buf.drain(..size + 2);
        }
    }

    fn need_more(&mut self) -> Result<(), ReadError> {
        if self.fill()? == 0 {
            return Err(ReadError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed mid-body",
            )));
        }
        Ok(())
    }

    /// Writes a response with Content-Length, and `Connection: close` unless `keep_alive`.
    pub fn write_response(&mut self, resp: &Response, keep_alive: bool) -> io::Result<()> {
        let mut out = Vec::with_capacity(256 + resp.body.len());
        write!(out, "HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status))?;
        for (k, v) in &resp.headers {
            write!(out, "{k}: {v}\r\n")?;
        }
        write!(out, "Content-Length: {}\r\n", resp.body.len())?;
        if !keep_alive {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&resp.body);
        self.stream.write_all(&out)?;
        self.stream.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A read-only stream over fixed bytes (writes go nowhere).
    struct Fixed(Cursor<Vec<u8>>);
    impl Read for Fixed {
        fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
            self.0.read(b)
        }
    }
    impl Write for Fixed {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn conn(bytes: &[u8]) -> Conn<Fixed> {
        Conn::new(Fixed(Cursor::new(bytes.to_vec())))
    }

    fn bad_status(r: Result<Request, ReadError>) -> u16 {
        match r {
            Err(ReadError::Bad(s, _)) => s,
            other => panic!("expected Bad, got {other:?}"),
        }
    }

    #[test]
    fn parses_content_length_and_pipelined_requests() {
        let mut c = conn(
            b"POST /agent/enroll?x=1 HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}GET /admin/stats HTTP/1.1\r\nConnection: close\r\n\r\n",
        );
        let r = c.read_request(100).expect("first");
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/agent/enroll");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.body, b"{}");
        assert!(r.keep_alive);
        let r = c.read_request(100).expect("second");
        assert_eq!(r.path, "/admin/stats");
        assert!(!r.keep_alive);
        assert!(matches!(c.read_request(100), Err(ReadError::Closed)));
    }

    #[test]
    fn parses_chunked_body() {
        let mut c = conn(
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\n",
        );
        let r = c.read_request(100).expect("chunked");
        assert_eq!(r.body, b"abcde");
        let mut c = conn(b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc");
        assert!(matches!(c.read_request(100), Err(ReadError::Io(_))));
        let mut c =
            conn(b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcdeXX0\r\n\r\n");
        assert_eq!(bad_status(c.read_request(100)), 400);
        let mut c = conn(b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n");
        assert_eq!(bad_status(c.read_request(100)), 400);
        let mut c = conn(b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n65\r\n");
        assert_eq!(bad_status(c.read_request(100)), 413);
    }

    #[test]
    fn rejects_malformed_heads() {
        assert_eq!(
            bad_status(conn(b"GARBAGE\x01 / HTTP/1.1\r\n\r\n").read_request(10)),
            400
        );
        assert_eq!(
            bad_status(conn(b"GET / HTTP/9.9\r\n\r\n").read_request(10)),
            400
        );
        assert_eq!(
            bad_status(conn(b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n").read_request(10)),
            400
        );
        assert_eq!(
            bad_status(conn(b"POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n").read_request(10)),
            400
        );
        assert_eq!(
            bad_status(
                conn(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n")
                    .read_request(10)
            ),
            400
        );
        assert_eq!(
            bad_status(
                conn(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n")
                    .read_request(10)
            ),
            400
        );
        assert_eq!(
            bad_status(
                conn(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n").read_request(10)
            ),
            501
        );
        assert_eq!(
            bad_status(conn(b"GET / HTTP/1.1\r\nX: \xff\xfe\r\n\r\n").read_request(10)),
            400
        );
    }

    #[test]
    fn bounds_head_headers_and_body() {
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', MAX_HEAD_BYTES + 10));
        assert_eq!(bad_status(conn(&big).read_request(10)), 431);
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..(MAX_HEADERS + 1) {
            many.extend(format!("X-{i}: 1\r\n").as_bytes());
        }
        many.extend(b"\r\n");
        assert_eq!(bad_status(conn(&many).read_request(10)), 431);
        assert_eq!(
            bad_status(conn(b"POST / HTTP/1.1\r\nContent-Length: 11\r\n\r\n").read_request(10)),
            413
        );
    }

    #[test]
    fn truncated_request_is_an_io_error_and_empty_stream_is_closed() {
        assert!(matches!(conn(b"").read_request(10), Err(ReadError::Closed)));
        assert!(matches!(
            conn(b"GET / HTTP/1.1\r\nHost").read_request(10),
            Err(ReadError::Io(_))
        ));
        assert!(matches!(
            conn(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab").read_request(10),
            Err(ReadError::Io(_))
        ));
    }

    /// A stream that reads fixed bytes and keeps what is written.
    struct Duplex(Cursor<Vec<u8>>, Vec<u8>);
    impl Read for Duplex {
        fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
            self.0.read(b)
        }
    }
    impl Write for Duplex {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.1.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn expect_100_continue_gets_the_go_ahead() {
        let input =
            b"POST /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi".to_vec();
        let mut c = Conn::new(Duplex(Cursor::new(input), Vec::new()));
        let r = c.read_request(10).expect("request");
        assert_eq!(r.body, b"hi");
        assert_eq!(c.stream.1, b"HTTP/1.1 100 Continue\r\n\r\n");
    }

    #[test]
    fn http10_closes_by_default() {
        let r = conn(b"GET / HTTP/1.0\r\n\r\n")
            .read_request(10)
            .expect("1.0");
        assert!(!r.keep_alive);
    }

    #[test]
    fn writes_response_with_length() {
        let mut c = Conn::new(Cursor::new(Vec::new()));
        c.write_response(&Response::error(409, "x"), false)
            .expect("write");
        let out = String::from_utf8(c.stream.into_inner()).expect("utf8");
        assert!(out.starts_with("HTTP/1.1 409 Conflict\r\n"), "{out}");
        assert!(out.contains("Content-Length: 13\r\n"), "{out}");
        assert!(out.contains("Connection: close\r\n"), "{out}");
        assert!(out.ends_with("\r\n\r\n{\"error\":\"x\"}"), "{out}");
    }
}
