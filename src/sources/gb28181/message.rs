//! SIP message framing and parsing (RFC 3261 §7), zero-copy over the received bytes, and
//! the response builder. Accepts what real GB/T 28181 devices send: compact header forms,
//! folded lines, odd spacing and case, bare LF line ends. Bounded: message size, header
//! count and Content-Length are capped; anything else is an `Error` (a 400 and a counted
//! reason upstream), never a panic. Pure: no sockets here.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::net::SocketAddr;

/// Largest SIP message accepted (a UDP datagram cannot be larger anyway).
pub const MAX_MESSAGE: usize = 65_535;
/// Most header lines accepted in one message.
pub const MAX_HEADERS: usize = 96;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("message of {0} bytes is larger than {MAX_MESSAGE}")]
    TooLarge(usize),
    #[error("no blank line ends the headers")]
    NoHeaderEnd,
    #[error("headers are not UTF-8")]
    NotUtf8,
    #[error("bad start line {0:?}")]
    StartLine(String),
    #[error("more than {MAX_HEADERS} headers")]
    TooManyHeaders,
    #[error("bad header line {0:?}")]
    HeaderLine(String),
    #[error("Content-Length {0:?} is not a number")]
    ContentLength(String),
    #[error("Content-Length {declared} but {available} body bytes")]
    Truncated { declared: usize, available: usize },
    #[error("missing {0} header")]
    Missing(&'static str),
}

impl Error {
    /// A short, stable label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::TooLarge(_) => "too_large",
            Error::NoHeaderEnd => "no_header_end",
            Error::NotUtf8 => "not_utf8",
            Error::StartLine(_) => "bad_start_line",
            Error::TooManyHeaders => "too_many_headers",
            Error::HeaderLine(_) => "bad_header",
            Error::ContentLength(_) => "bad_content_length",
            Error::Truncated { .. } => "truncated",
            Error::Missing(_) => "missing_header",
        }
    }
}

fn excerpt(s: &str) -> String {
    s.chars().take(60).collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine<'a> {
    Request { method: &'a str, uri: &'a str },
    Response { code: u16, reason: &'a str },
}

/// A parsed SIP message borrowing the datagram (or the TCP frame).
#[derive(Debug, Clone)]
pub struct Message<'a> {
    pub start: StartLine<'a>,
    /// (known-header id, name as sent, value); the id makes lookups a byte compare.
    headers: Vec<(u8, &'a str, Cow<'a, str>)>,
    pub body: &'a [u8],
}

/// The headers vigil looks up, numbered (0 is any other), with their compact forms
/// (RFC 3261 §7.3.3) mapped to the same number.
fn known(name: &str) -> u8 {
    let is = |s: &str| name.eq_ignore_ascii_case(s);
    match name.len() {
        1 => match name.as_bytes()[0].to_ascii_lowercase() {
            b'i' => 4,
            b'f' => 2,
            b't' => 3,
            b'v' => 1,
            b'l' => 7,
            b'c' => 8,
            b'm' => 6,
            b's' => 13,
            b'k' => 14,
            _ => 0,
        },
        2 if is("To") => 3,
        3 if is("Via") => 1,
        4 if is("From") => 2,
        4 if is("CSeq") => 5,
        5 if is("Event") => 15,
        7 if is("Call-ID") => 4,
        7 if is("Contact") => 6,
        7 if is("Expires") => 9,
        7 if is("Subject") => 13,
        8 if is("X-GB-Ver") => 16,
        9 if is("Supported") => 14,
        10 if is("User-Agent") => 11,
        12 if is("Content-Type") => 8,
        13 if is("Authorization") => 10,
        14 if is("Content-Length") => 7,
        16 if is("WWW-Authenticate") => 12,
        19 if is("Proxy-Authorization") => 17,
        _ => 0,
    }
}

const CONTENT_LENGTH: u8 = 7;

/// Where the headers end (the index of the body): after the first empty line, CRLF or
/// bare LF. One pass over the header bytes only.
fn header_end(buf: &[u8]) -> Option<usize> {
    for i in memchr::memchr_iter(b'\n', buf) {
        match buf.get(i + 1) {
            Some(b'\n') => return Some(i + 2),
            Some(b'\r') if buf.get(i + 2) == Some(&b'\n') => return Some(i + 3),
            _ => {}
        }
    }
    None
}

/// On a stream (TCP): the length of the first complete message in `buf`, `Ok(None)` if more
/// bytes are needed. Leading CRLF keep-alives are counted into the frame and skipped by parse.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, Error> {
    let skip = buf.iter().take_while(|b| **b == b'\r' || **b == b'\n').count();
    let Some(end) = header_end(&buf[skip..]) else {
        return if buf.len() > MAX_MESSAGE { Err(Error::TooLarge(buf.len())) } else { Ok(None) };
    };
    let head = std::str::from_utf8(&buf[skip..skip + end]).map_err(|_| Error::NotUtf8)?;
    let mut len = 0usize;
    for line in head.lines() {
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim();
            if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("l") {
                len = value.trim().parse().map_err(|_| Error::ContentLength(excerpt(value)))?;
            }
        }
    }
    let total = skip + end + len;
    if total > MAX_MESSAGE {
        return Err(Error::TooLarge(total));
    }
    Ok((buf.len() >= total).then_some(total))
}

impl<'a> Message<'a> {
    /// Parses one message (one UDP datagram or one TCP frame).
    pub fn parse(buf: &'a [u8]) -> Result<Self, Error> {
        if buf.len() > MAX_MESSAGE {
            return Err(Error::TooLarge(buf.len()));
        }
        let skip = buf.iter().take_while(|b| **b == b'\r' || **b == b'\n').count();
        let buf = &buf[skip..];
        let end = header_end(buf).ok_or(Error::NoHeaderEnd)?;
        let head = std::str::from_utf8(&buf[..end]).map_err(|_| Error::NotUtf8)?;
        let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
        let first = lines.next().unwrap_or_default();
        let start = parse_start(first)?;
        let mut headers: Vec<(u8, &'a str, Cow<'a, str>)> = Vec::with_capacity(16);
        for line in lines {
            if line.is_empty() {
                continue;
            }
            if line.starts_with([' ', '\t']) {
                // A folded continuation of the previous header.
                let Some((_, _, value)) = headers.last_mut() else {
                    return Err(Error::HeaderLine(excerpt(line)));
                };
                let joined = format!("{} {}", value, line.trim());
                *value = Cow::Owned(joined);
                continue;
            }
            if headers.len() == MAX_HEADERS {
                return Err(Error::TooManyHeaders);
            }
            let (name, value) = line.split_once(':').ok_or_else(|| Error::HeaderLine(excerpt(line)))?;
            let name = name.trim();
            if name.is_empty() || name.contains(' ') {
                return Err(Error::HeaderLine(excerpt(line)));
            }
            headers.push((known(name), name, Cow::Borrowed(value.trim())));
        }
        let rest = &buf[end..];
        let body = match headers.iter().find(|(id, _, _)| *id == CONTENT_LENGTH) {
            Some((_, _, v)) => {
                let declared: usize = v.parse().map_err(|_| Error::ContentLength(excerpt(v)))?;
                if declared > rest.len() {
                    return Err(Error::Truncated { declared, available: rest.len() });
                }
                &rest[..declared]
            }
            None => rest,
        };
        Ok(Message { start, headers, body })
    }

    /// The first value of a header, by its full name (compact forms match too).
    pub fn header(&self, name: &str) -> Option<&str> {
        let id = known(name);
        self.headers
            .iter()
            .find(|(i, n, _)| if id != 0 { *i == id } else { n.eq_ignore_ascii_case(name) })
            .map(|(_, _, v)| v.as_ref())
    }

    /// Every value of a header, in order (Via may repeat or be comma-joined).
    pub fn headers<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s str> {
        let id = known(name);
        self.headers
            .iter()
            .filter(move |(i, n, _)| if id != 0 { *i == id } else { n.eq_ignore_ascii_case(name) })
            .map(|(_, _, v)| v.as_ref())
    }

    pub fn method(&self) -> Option<&str> {
        match self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The CSeq number and method.
    pub fn cseq(&self) -> Option<(u32, &str)> {
        let v = self.header("CSeq")?;
        let (n, m) = v.split_once(char::is_whitespace)?;
        Some((n.trim().parse().ok()?, m.trim()))
    }

    /// The Via branch of the top Via (transaction key).
    pub fn branch(&self) -> Option<&str> {
        let via = self.header("Via")?;
        let top = via.split(',').next()?;
        param(top, "branch")
    }
}

fn parse_start(line: &str) -> Result<StartLine<'_>, Error> {
    let bad = || Error::StartLine(excerpt(line));
    if let Some(rest) = line.strip_prefix("SIP/2.0 ") {
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        let code: u16 = code.trim().parse().map_err(|_| bad())?;
        if !(100..700).contains(&code) {
            return Err(bad());
        }
        return Ok(StartLine::Response { code, reason: reason.trim() });
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(uri), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if !version.eq_ignore_ascii_case("SIP/2.0")
        || !method.bytes().all(|b| b.is_ascii_alphabetic())
        || !uri.contains(':')
    {
        return Err(bad());
    }
    Ok(StartLine::Request { method, uri })
}

/// A `;name=value` parameter of a header value (case-insensitive name). `Some("")` for a
/// bare flag such as `;rport`.
pub fn param<'v>(value: &'v str, name: &str) -> Option<&'v str> {
    value.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim().trim_matches('"'))
    })
}

/// The user part of the SIP URI in a From/To/Contact/Request-URI value
/// (`<sip:34020000001320000001@3402000000>;tag=..` → `34020000001320000001`).
pub fn uri_user(value: &str) -> Option<&str> {
    let v = value.trim();
    let inner = match (v.find('<'), v.find('>')) {
        (Some(a), Some(b)) if a < b => &v[a + 1..b],
        _ => v.split(';').next().unwrap_or(v),
    };
    let after =
        inner.strip_prefix("sip:").or_else(|| inner.strip_prefix("sips:")).or_else(|| inner.strip_prefix("SIP:"))?;
    let user = after.split('@').next()?;
    (!user.is_empty() && after.contains('@')).then_some(user)
}

/// Builds a response to `req`: Via (the top one with `received`/`rport` for `from`), From,
/// To (with our tag when it has none), Call-ID and CSeq copied; then `extra` headers and
/// the body.
pub fn response(
    req: &Message<'_>,
    code: u16,
    reason: &str,
    from: SocketAddr,
    to_tag: &str,
    extra: &[(&str, String)],
    body: &[u8],
) -> Vec<u8> {
    let mut out = String::with_capacity(512);
    let _ = write!(out, "SIP/2.0 {code} {reason}\r\n");
    let mut first = true;
    for via in req.headers("Via") {
        for one in via.split(',') {
            let one = one.trim();
            if first {
                first = false;
                let mut v = String::with_capacity(one.len() + 40);
                for (i, part) in one.split(';').enumerate() {
                    if i > 0 {
                        v.push(';');
                    }
                    let key = part.split('=').next().unwrap_or("").trim();
                    if key.eq_ignore_ascii_case("rport") {
                        let _ = write!(v, "rport={}", from.port());
                    } else if key.eq_ignore_ascii_case("received") {
                        continue;
                    } else {
                        v.push_str(part);
                    }
                }
                let v = v.trim_end_matches(';');
                let _ = write!(out, "Via: {v};received={}\r\n", from.ip());
            } else {
                let _ = write!(out, "Via: {one}\r\n");
            }
        }
    }
    if let Some(f) = req.header("From") {
        let _ = write!(out, "From: {f}\r\n");
    }
    if let Some(t) = req.header("To") {
        if param(t, "tag").is_none() && code > 100 {
            let _ = write!(out, "To: {t};tag={to_tag}\r\n");
        } else {
            let _ = write!(out, "To: {t}\r\n");
        }
    }
    if let Some(c) = req.header("Call-ID") {
        let _ = write!(out, "Call-ID: {c}\r\n");
    }
    if let Some(c) = req.header("CSeq") {
        let _ = write!(out, "CSeq: {c}\r\n");
    }
    for (n, v) in extra {
        let _ = write!(out, "{n}: {v}\r\n");
    }
    let _ = write!(out, "User-Agent: vigil/{}\r\nContent-Length: {}\r\n\r\n", env!("CARGO_PKG_VERSION"), body.len());
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TV1 of shared/reference/gb28181.md §3.10: a REGISTER from WVP acting as a lower
    /// platform, over TCP, from a NATed VM (wvp-GB28181-pro issue 2048).
    const TV1: &str = "REGISTER sip:34020000002000000003@49.7.197.1:8900 SIP/2.0\r\n\
Call-ID: 60374244d4828764e4b64a6e622d2521@172.27.0.27\r\n\
CSeq: 413 REGISTER\r\n\
From: <sip:34020092992000868740@1101070049>;tag=a16a1715b92e45b8855eb6954d5738a1\r\n\
To: <sip:34020092992000868740@1101070049>\r\n\
Via: SIP/2.0/TCP 172.27.0.27:15060;branch=z9hG4bK8770638578;rport\r\n\
Max-Forwards: 70\r\n\
Contact: <sip:34020092992000868740@172.27.0.27:15060>\r\n\
Expires: 3600\r\n\
User-Agent: WVP-Pro v2.7.4.20251028\r\n\
Content-Length: 0\r\n\r\n";

    #[test]
    fn parses_a_wvp_register() {
        let m = Message::parse(TV1.as_bytes()).expect("TV1 parses");
        assert_eq!(m.method(), Some("REGISTER"));
        assert_eq!(m.header("expires"), Some("3600"));
        assert_eq!(m.cseq(), Some((413, "REGISTER")));
        assert_eq!(m.branch(), Some("z9hG4bK8770638578"));
        assert_eq!(m.header("From").and_then(uri_user), Some("34020092992000868740"));
        assert!(m.body.is_empty());
        assert_eq!(frame_len(TV1.as_bytes()), Ok(Some(TV1.len())));
        assert_eq!(frame_len(&TV1.as_bytes()[..100]), Ok(None));
    }

    #[test]
    fn compact_forms_folding_bare_lf_and_bodies() {
        let raw = "MESSAGE sip:42010400002000000001@4201040000 SIP/2.0\n\
v: SIP/2.0/UDP 10.0.0.2:5060;branch=lunaProxy1;rport\n\
f: <sip:42010400001320000001@4201040000>;tag=1\n\
t: <sip:42010400002000000001@4201040000>\n\
i: abc\n\
CSeq: 20 MESSAGE\n\
c: Application/MANSCDP+xml\n\
X-Folded: first\n\
\t second\n\
l: 5\n\nhello and trailing";
        let m = Message::parse(raw.as_bytes()).expect("parses");
        assert_eq!(m.header("Call-ID"), Some("abc"));
        assert_eq!(m.header("content-type"), Some("Application/MANSCDP+xml"));
        assert_eq!(m.header("X-Folded"), Some("first second"));
        assert_eq!(m.body, b"hello");
        assert_eq!(m.branch(), Some("lunaProxy1"), "a branch without the magic cookie is accepted");
    }

    #[test]
    fn garbage_is_an_error_with_a_reason() {
        for (raw, reason) in [
            (&b"hello"[..], "no_header_end"),
            (b"NOT A SIP LINE\r\n\r\n", "bad_start_line"),
            (b"REGISTER sip:a@b SIP/2.0\r\nno colon here\r\n\r\n", "bad_header"),
            (b"REGISTER sip:a@b SIP/2.0\r\nContent-Length: 99999\r\n\r\nshort", "truncated"),
            (b"REGISTER sip:a@b SIP/2.0\r\nContent-Length: -1\r\n\r\n", "bad_content_length"),
            (b"REGISTER sip:a@b SIP/2.0\r\nX: \xff\xfe\r\n\r\n", "not_utf8"),
        ] {
            let e = Message::parse(raw).expect_err("must fail");
            assert_eq!(e.reason(), reason, "{e}");
        }
        let big = vec![b'a'; MAX_MESSAGE + 1];
        assert_eq!(Message::parse(&big).expect_err("too big").reason(), "too_large");
    }

    #[test]
    fn responses_carry_received_and_rport_for_nat() {
        let m = Message::parse(TV1.as_bytes()).expect("parses");
        let from: SocketAddr = "49.7.10.20:40123".parse().expect("addr");
        let r = response(&m, 401, "Unauthorized", from, "vigiltag", &[("WWW-Authenticate", "Digest x".into())], b"");
        let text = String::from_utf8(r).expect("utf8");
        assert!(text.starts_with("SIP/2.0 401 Unauthorized\r\n"));
        assert!(
            text.contains(
                "Via: SIP/2.0/TCP 172.27.0.27:15060;branch=z9hG4bK8770638578;rport=40123;received=49.7.10.20\r\n"
            ),
            "{text}"
        );
        assert!(text.contains("To: <sip:34020092992000868740@1101070049>;tag=vigiltag\r\n"));
        assert!(text.contains("CSeq: 413 REGISTER\r\n"));
        let back = Message::parse(text.as_bytes()).expect("our response parses");
        assert_eq!(back.start, StartLine::Response { code: 401, reason: "Unauthorized" });
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            let _ = Message::parse(&bytes);
            let _ = frame_len(&bytes);
        }

        #[test]
        fn mutated_registers_never_panic(cut in 0usize..600, byte in proptest::prelude::any::<u8>(), at in 0usize..600) {
            let mut b = TV1.as_bytes().to_vec();
            if at < b.len() { b[at] = byte; }
            b.truncate(cut.max(1));
            if let Ok(m) = Message::parse(&b) {
                let _ = m.cseq();
                let _ = m.branch();
                let _ = m.header("From").and_then(uri_user);
            }
        }
    }
}
