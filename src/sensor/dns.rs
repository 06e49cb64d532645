//! The question of a DNS query, parsed from the bounded copy of a UDP payload the kernel side
//! took (bpf/dns.bpf.h): the header (RFC 1035 4.1.1) and the first question (4.1.2). The bytes
//! are whatever a process sent to port 53, so every length is checked and anything that is not
//! a well-formed query is a [`Malformed`] (counted by the pipeline), never a panic.
//!
//! Self-contained (no crate imports): the fuzz target (fuzz/fuzz_targets/dns_question.rs)
//! compiles this file on its own.

/// The first question of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    /// The header's id.
    pub id: u16,
    /// The header's opcode (0 QUERY, 1 IQUERY, 2 STATUS, 4 NOTIFY, 5 UPDATE).
    pub opcode: u8,
    /// The name, labels joined by `.` (`example.com`; the root is `.`), bytes other than
    /// letters, digits, `-` and `_` escaped as `\DDD` (and `.`/`\` inside a label as `\.`/`\\`),
    /// as in a zone file.
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
}

/// Why a payload is not a DNS query's question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Fewer than the 12 bytes of a header.
    Short,
    /// The QR bit says response.
    NotAQuery,
    /// QDCOUNT is 0.
    NoQuestion,
    /// A label length byte with the top bits set: a compression pointer (never in a question)
    /// or a reserved label type.
    BadLabel,
    /// The name is longer than 255 bytes.
    NameTooLong,
    /// The name or its type and class run past the bytes there are.
    Truncated,
}

impl Malformed {
    pub fn as_str(&self) -> &'static str {
        match self {
            Malformed::Short => "shorter than a DNS header",
            Malformed::NotAQuery => "a response, not a query",
            Malformed::NoQuestion => "no question",
            Malformed::BadLabel => "a label that is a pointer or of a reserved type",
            Malformed::NameTooLong => "a name longer than 255 bytes",
            Malformed::Truncated => "cut off inside the question",
        }
    }
}

/// Parses the first question of `msg`.
pub fn parse(msg: &[u8]) -> Result<Question, Malformed> {
    let header = msg.get(..12).ok_or(Malformed::Short)?;
    let id = u16::from_be_bytes([header[0], header[1]]);
    let flags = header[2];
    if flags & 0x80 != 0 {
        return Err(Malformed::NotAQuery);
    }
    let opcode = (flags >> 3) & 0x0f;
    if u16::from_be_bytes([header[4], header[5]]) == 0 {
        return Err(Malformed::NoQuestion);
    }
    let mut pos = 12;
    let mut wire_len = 0usize;
    let mut name = String::new();
    loop {
        let len = usize::from(*msg.get(pos).ok_or(Malformed::Truncated)?);
        pos += 1;
        wire_len += 1;
        if len == 0 {
            break;
        }
        if len & 0xc0 != 0 {
            return Err(Malformed::BadLabel);
        }
        wire_len += len;
        if wire_len > 255 {
            return Err(Malformed::NameTooLong);
        }
        let label = msg.get(pos..pos + len).ok_or(Malformed::Truncated)?;
        pos += len;
        if !name.is_empty() {
            name.push('.');
        }
        for &b in label {
            match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' => name.push(char::from(b)),
                b'.' | b'\\' => {
                    name.push('\\');
                    name.push(char::from(b));
                }
                _ => name.push_str(&format!("\\{b:03}")),
            }
        }
    }
    if name.is_empty() {
        name.push('.');
    }
    let tail = msg.get(pos..pos + 4).ok_or(Malformed::Truncated)?;
    Ok(Question {
        id,
        opcode,
        name,
        qtype: u16::from_be_bytes([tail[0], tail[1]]),
        qclass: u16::from_be_bytes([tail[2], tail[3]]),
    })
}

/// A query type's mnemonic (`A`, `AAAA`, ...), else `TYPE<n>` (RFC 3597).
pub fn type_name(t: u16) -> std::borrow::Cow<'static, str> {
    let name = match t {
        1 => "A",
        2 => "NS",
        5 => "CNAME",
        6 => "SOA",
        12 => "PTR",
        13 => "HINFO",
        15 => "MX",
        16 => "TXT",
        28 => "AAAA",
        33 => "SRV",
        35 => "NAPTR",
        41 => "OPT",
        43 => "DS",
        46 => "RRSIG",
        48 => "DNSKEY",
        64 => "SVCB",
        65 => "HTTPS",
        99 => "SPF",
        252 => "AXFR",
        255 => "ANY",
        257 => "CAA",
        _ => return format!("TYPE{t}").into(),
    };
    name.into()
}

/// A class's mnemonic (`IN`, ...), else `CLASS<n>`.
pub fn class_name(c: u16) -> std::borrow::Cow<'static, str> {
    match c {
        1 => "IN".into(),
        3 => "CH".into(),
        4 => "HS".into(),
        255 => "ANY".into(),
        _ => format!("CLASS{c}").into(),
    }
}

/// An opcode's name (`QUERY`, ...), else its number.
pub fn opcode_name(o: u8) -> std::borrow::Cow<'static, str> {
    match o {
        0 => "QUERY".into(),
        1 => "IQUERY".into(),
        2 => "STATUS".into(),
        4 => "NOTIFY".into(),
        5 => "UPDATE".into(),
        _ => o.to_string().into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A query for `name` (labels given), type `qtype`, class IN, id 0x1234, RD set.
    fn query(labels: &[&[u8]], qtype: u16) -> Vec<u8> {
        let mut m = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for l in labels {
            m.push(l.len() as u8);
            m.extend_from_slice(l);
        }
        m.push(0);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&1u16.to_be_bytes());
        m
    }

    #[test]
    fn well_formed_queries_parse() {
        let q = parse(&query(&[b"www", b"example", b"com"], 28)).expect("parse");
        assert_eq!(q.name, "www.example.com");
        assert_eq!((q.id, q.opcode, q.qtype, q.qclass), (0x1234, 0, 28, 1));
        assert_eq!(type_name(q.qtype), "AAAA");
        assert_eq!(class_name(q.qclass), "IN");
        assert_eq!(type_name(4242), "TYPE4242");
        // The root, and bytes that need escaping (exfiltration encodes anything).
        assert_eq!(parse(&query(&[], 2)).expect("root").name, ".");
        let odd = parse(&query(&[b"a.b\\c", &[0, 0xff, b' ']], 16)).expect("odd");
        assert_eq!(odd.name, "a\\.b\\\\c.\\000\\255\\032");
        // Trailing bytes (EDNS OPT record) are ignored.
        let mut edns = query(&[b"x"], 1);
        edns.extend_from_slice(&[0, 0, 41, 16, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(parse(&edns).expect("edns").name, "x");
        // The longest name fits: 127 one-byte labels and the root, 255 bytes on the wire.
        let labels: Vec<&[u8]> = vec![b"a"; 127];
        assert_eq!(parse(&query(&labels, 1)).expect("long").name.len(), 253);
    }

    #[test]
    fn malformed_payloads_are_errors_never_panics() {
        assert_eq!(parse(&[]), Err(Malformed::Short));
        assert_eq!(parse(&[0; 11]), Err(Malformed::Short));
        let mut response = query(&[b"x"], 1);
        response[2] |= 0x80;
        assert_eq!(parse(&response), Err(Malformed::NotAQuery));
        let mut none = query(&[b"x"], 1);
        none[5] = 0;
        assert_eq!(parse(&none), Err(Malformed::NoQuestion));
        let mut pointer = query(&[b"x"], 1);
        pointer[12] = 0xc0;
        assert_eq!(parse(&pointer), Err(Malformed::BadLabel));
        let labels: Vec<&[u8]> = vec![b"a"; 128];
        assert_eq!(parse(&query(&labels, 1)), Err(Malformed::NameTooLong));
        let full = query(&[b"abc"], 1);
        for cut in 12..full.len() {
            assert_eq!(
                parse(&full[..cut]),
                Err(Malformed::Truncated),
                "cut at {cut}"
            );
        }
        // A label that claims more bytes than there are.
        let mut over = query(&[b"x"], 1);
        over[12] = 63;
        assert_eq!(parse(&over), Err(Malformed::Truncated));
        // Every short prefix of random-ish bytes: no panic.
        let junk: Vec<u8> = (0..300u32).map(|i| (i * 7919 % 251) as u8).collect();
        for end in 0..junk.len() {
            let _ = parse(&junk[..end]);
        }
    }
}
