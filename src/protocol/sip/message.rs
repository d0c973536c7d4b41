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
    #[error("{0} Content-Length headers: the body's length is ambiguous")]
    DuplicateContentLength(usize),
    #[error("SIP version {0:?} is not supported")]
    Version(String),
    #[error("bad {header}: {why}")]
    Header { header: &'static str, why: &'static str },
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
            Error::DuplicateContentLength(_) => "duplicate_content_length",
            Error::Version(_) => "bad_version",
            Error::Header { .. } => "bad_header",
        }
    }

    /// The status a request that fails this way is answered with (RFC 3261 §8.2, §21.5.26).
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            Error::Version(_) => (505, "Version Not Supported"),
            Error::TooLarge(_) => (513, "Message Too Large"),
            _ => (400, "Bad Request"),
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

/// The one Content-Length among a message's values of it: none is `None`, two or more (even
/// equal) are an error — a stream cannot be framed on a guess — and so is anything but
/// decimal digits (`-999`, `+5`, `5 5`).
fn content_length<'v>(mut values: impl Iterator<Item = &'v str>) -> Result<Option<usize>, Error> {
    let Some(first) = values.next() else { return Ok(None) };
    let more = values.count();
    if more > 0 {
        return Err(Error::DuplicateContentLength(more + 1));
    }
    let v = first.trim();
    if v.is_empty() || v.len() > 9 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::ContentLength(excerpt(v)));
    }
    v.parse().map(Some).map_err(|_| Error::ContentLength(excerpt(v)))
}

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
    let values = head.lines().filter_map(|line| {
        let (name, value) = line.split_once(':')?;
        let name = name.trim();
        (name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("l")).then_some(value)
    });
    let len = content_length(values)?.unwrap_or(0);
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
        let declared =
            content_length(headers.iter().filter(|(id, _, _)| *id == CONTENT_LENGTH).map(|(_, _, v)| v.as_ref()))?;
        let body = match declared {
            Some(declared) if declared > rest.len() => {
                return Err(Error::Truncated { declared, available: rest.len() });
            }
            Some(declared) => &rest[..declared],
            None => rest,
        };
        let msg = Message { start, headers, body };
        super::syntax::check(&msg)?;
        Ok(msg)
    }

    /// What can be read of a message that failed to parse, to answer it: a request's Via,
    /// From, To, Call-ID and CSeq, read leniently (unknown lines skipped, the start line and
    /// the body not looked at). `None` for a response (never answered) or when one of those
    /// is missing (nothing to address an answer to).
    pub fn salvage(buf: &'a [u8]) -> Option<Self> {
        let skip = buf.iter().take_while(|b| **b == b'\r' || **b == b'\n').count();
        let buf = buf.get(skip..buf.len().min(MAX_MESSAGE))?;
        let end = header_end(buf).unwrap_or(buf.len());
        let head = match std::str::from_utf8(&buf[..end]) {
            Ok(h) => h,
            Err(e) => std::str::from_utf8(&buf[..e.valid_up_to()]).ok()?,
        };
        let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
        let first = lines.next()?;
        if first.starts_with("SIP/") || first.len() < 3 {
            return None;
        }
        let headers: Vec<(u8, &'a str, Cow<'a, str>)> = lines
            .filter_map(|line| {
                let (name, value) = line.split_once(':')?;
                let id = known(name.trim());
                // Only what an answer copies; a header repeated where one is allowed is not
                // guessed at.
                matches!(id, 1..=5).then(|| (id, name.trim(), Cow::Borrowed(value.trim())))
            })
            .take(MAX_HEADERS)
            .collect();
        let msg = Message { start: StartLine::Request { method: "", uri: "" }, headers, body: b"" };
        let once = |n: &str| msg.headers(n).count() == 1;
        (msg.header("Via").is_some() && once("From") && once("To") && once("Call-ID") && once("CSeq")).then_some(msg)
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

/// The start line, as RFC 3261 §7.1/§7.2 write it: single spaces between the three parts and
/// none after (RFC 4475 lwsstart, trws, lwsruri), a three-digit status code (bigcode), a
/// Request-URI that is not in `<>` and carries no headers (ltgtruri, escruri).
fn parse_start(line: &str) -> Result<StartLine<'_>, Error> {
    let bad = || Error::StartLine(excerpt(line));
    if let Some(rest) = line.strip_prefix("SIP/2.0 ") {
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let code: u16 = code.parse().map_err(|_| bad())?;
        if !(100..700).contains(&code) {
            return Err(bad());
        }
        return Ok(StartLine::Response { code, reason: reason.trim() });
    }
    let mut parts = line.split(' ');
    let (Some(method), Some(uri), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if method.is_empty() || !method.bytes().all(super::syntax::is_token_byte) {
        return Err(bad());
    }
    if !version.eq_ignore_ascii_case("SIP/2.0") {
        let is_version = version.len() > 4 && version.get(..4).is_some_and(|v| v.eq_ignore_ascii_case("SIP/"));
        return Err(if is_version { Error::Version(excerpt(version)) } else { bad() });
    }
    if uri.starts_with('<') || !uri.contains(':') || uri.contains('?') || uri.bytes().any(|b| b.is_ascii_control()) {
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

    /// What vigil does with a message it must not act on.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Want {
        /// Refused with this status (over UDP an answer; over TCP the same answer on the
        /// connection, or the connection closed where the stream cannot be framed).
        Answer(u16),
        /// A response: discarded, never answered.
        Drop,
        /// RFC 4475 allows an element to be liberal here, and vigil reads nothing wrong.
        Accept,
    }

    macro_rules! fixture {
        ($name:literal) => {
            ($name, &include_bytes!(concat!("../../../tests/fixtures/sip/rfc4475/", $name, ".sip"))[..])
        };
    }

    /// Every invalid message of RFC 4475 §3.1.2 (the fixtures are the RFC's bytes; each
    /// body's length matches the RFC's Content-Length), plus two Content-Length headers.
    #[test]
    fn rfc4475_invalid_messages_are_refused_or_dropped() {
        use Want::*;
        let table: [((&str, &[u8]), Want); 20] = [
            (fixture!("badinv01"), Answer(400)),   // §3.1.2.1 empty Via and Contact parameters
            (fixture!("clerr"), Answer(400)),      // §3.1.2.2 Content-Length larger than the message
            (fixture!("ncl"), Answer(400)),        // §3.1.2.3 negative Content-Length
            (fixture!("scalar02"), Answer(400)),   // §3.1.2.4 CSeq, Max-Forwards, Expires too large
            (fixture!("scalarlg"), Drop),          // §3.1.2.5 a response with overlarge scalars
            (fixture!("quotbal"), Answer(400)),    // §3.1.2.6 unterminated quoted display name
            (fixture!("ltgtruri"), Answer(400)),   // §3.1.2.7 <> around the Request-URI
            (fixture!("lwsruri"), Answer(400)),    // §3.1.2.8 LWS inside the Request-URI
            (fixture!("lwsstart"), Answer(400)),   // §3.1.2.9 several SP between start-line parts
            (fixture!("trws"), Answer(400)),       // §3.1.2.10 SP at the end of the request line
            (fixture!("escruri"), Answer(400)),    // §3.1.2.11 escaped headers in the Request-URI
            (fixture!("baddate"), Accept),         // §3.1.2.12 bad Date zone: vigil never reads Date
            (fixture!("regbadct"), Answer(400)),   // §3.1.2.13 URI with headers not in <>
            (fixture!("badaspec"), Answer(400)),   // §3.1.2.14 spaces within addr-spec
            (fixture!("baddn"), Answer(400)),      // §3.1.2.15 unquoted display name with a comma
            (fixture!("badvers"), Answer(505)),    // §3.1.2.16 SIP/7.0
            (fixture!("mismatch01"), Answer(400)), // §3.1.2.17 CSeq method is not the request's
            (fixture!("mismatch02"), Answer(400)), // §3.1.2.18 unknown method, CSeq mismatch
            (fixture!("bigcode"), Drop),           // §3.1.2.19 overlarge response code
            (
                ("dup-content-length", &include_bytes!("../../../tests/fixtures/sip/dup-content-length.sip")[..]),
                Answer(400),
            ),
        ];
        let from: SocketAddr = "192.0.2.9:5060".parse().expect("addr");
        for ((name, raw), want) in table {
            match (Message::parse(raw), want) {
                (Ok(_), Accept) => {}
                (Err(e), Answer(code)) => {
                    assert_eq!(e.status().0, code, "{name}: {e}");
                    let m = Message::salvage(raw).unwrap_or_else(|| panic!("{name}: nothing to address an answer to"));
                    // The answer copies what the request said (a bad CSeq included, as
                    // RFC 3261 §8.2.6.2 asks), so it is checked as text.
                    let answer =
                        String::from_utf8(response(&m, code, "Bad Request", from, "t", &[], b"")).expect("utf8");
                    assert!(answer.starts_with(&format!("SIP/2.0 {code} ")), "{name}: {answer}");
                    let call_id = m.header("Call-ID").expect("salvage requires a Call-ID");
                    assert!(answer.contains(&format!("\r\nCall-ID: {call_id}\r\n")), "{name}: {answer}");
                    assert!(call_id.starts_with(name) || name == "dup-content-length", "{name}: {call_id}");
                }
                (Err(_), Drop) => assert!(Message::salvage(raw).is_none(), "{name}: a response is never answered"),
                (got, want) => panic!("{name}: want {want:?}, got {got:?}"),
            }
        }
        // On a stream the framing itself is refused: two lengths or a negative one close the
        // connection; a length past what arrived waits for more.
        let dup = include_bytes!("../../../tests/fixtures/sip/dup-content-length.sip");
        assert_eq!(frame_len(dup).map_err(|e| e.reason()), Err("duplicate_content_length"));
        let ncl = include_bytes!("../../../tests/fixtures/sip/rfc4475/ncl.sip");
        assert_eq!(frame_len(ncl).map_err(|e| e.reason()), Err("bad_content_length"));
        let clerr = include_bytes!("../../../tests/fixtures/sip/rfc4475/clerr.sip");
        assert_eq!(frame_len(clerr), Ok(None));
    }

    /// RFC 4475 §3.1.1's valid torture messages that vigil's devices could send stay valid.
    #[test]
    fn the_short_tortuous_invite_still_parses() {
        let wsinv = "INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0\r\nTO :\r\n sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n\r\nfrom   : \"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>\r\n  ;\r\n  tag = 98asjd8\r\nMaX-fOrWaRdS: 0068\r\nCall-ID: wsinv.ndaksdj@192.0.2.1\r\nContent-Length   : 150\r\ncseq: 0009\r\n  INVITE\r\nVia  : SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw\r\ns :\r\nNewFangledHeader:   newfangled value\r\n continued newfangled value\r\nUnknownHeaderWithUnusualValue: ;;,,;;,;\r\nContent-Type: application/sdp\r\nRoute:\r\n <sip:services.example.com;lr;unknownwith=value;unknown-no-value>\r\nv:  SIP  / 2.0  / TCP     spindle.example.com   ;\r\n  branch  =   z9hG4bK9ikj8  ,\r\n SIP  /    2.0   / UDP  192.168.255.111   ; branch=\r\n z9hG4bK30239\r\nm:\"Quoted string \\\"\\\"\" <sip:jdrosen@example.com> ; newparam =\r\n      newvalue ;\r\n  secondparam ; q = 0.33\r\n\r\nv=0\r\no=mhandley 29739 7272939 IN IP4 192.0.2.3\r\ns=-\r\nc=IN IP4 192.0.2.4\r\nt=0 0\r\nm=audio 49217 RTP/AVP 0 12\r\nm=video 3227 RTP/AVP 31\r\na=rtpmap:31 LPC\r\n";
        let m = Message::parse(wsinv.as_bytes()).unwrap_or_else(|e| panic!("wsinv: {e}"));
        assert_eq!(m.cseq(), Some((9, "INVITE")));
        assert_eq!(m.body.len(), 150);
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
