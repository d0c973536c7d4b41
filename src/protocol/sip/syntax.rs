//! The header syntax checks a parsed SIP message must pass before anything acts on it:
//! the ones whose failure would make vigil read a value the sender did not mean (RFC 3261
//! §25 grammar, the invalid messages of RFC 4475 §3.1.2). CSeq within 2^31 and naming the
//! request's method; Max-Forwards ≤ 255; Expires a 32-bit number; Via, From, To and Contact
//! well formed (balanced quotes, an unquoted display name of tokens only, no spaces inside
//! `<>`, no empty parameters). Headers vigil never reads (Date, Accept, ...) are not judged.
//! Pure: called by `Message::parse`, no I/O.

use super::message::{Error, Message, StartLine};

/// RFC 3261 `token` characters.
pub fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

fn bad(header: &'static str, why: &'static str) -> Error {
    Error::Header { header, why }
}

/// Checks every header vigil reads. Responses get the CSeq check only (a response that fails
/// it is dropped, never answered).
pub fn check(msg: &Message<'_>) -> Result<(), Error> {
    let method = match msg.start {
        StartLine::Request { method, .. } => Some(method),
        StartLine::Response { .. } => None,
    };
    for cseq in msg.headers("CSeq") {
        let (n, m) = cseq.split_once(|c: char| c.is_ascii_whitespace()).ok_or(bad("CSeq", "not `number method`"))?;
        let (n, m) = (n.trim(), m.trim());
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) || n.parse::<u64>().map_or(true, |v| v >= 1 << 31) {
            return Err(bad("CSeq", "the sequence number is not a number below 2^31"));
        }
        if m.is_empty() || !m.bytes().all(is_token_byte) {
            return Err(bad("CSeq", "the method is not a token"));
        }
        if method.is_some_and(|r| r != m) {
            return Err(bad("CSeq", "its method is not the request's"));
        }
    }
    if method.is_none() {
        return Ok(());
    }
    if msg.headers("CSeq").count() > 1 {
        return Err(bad("CSeq", "more than one"));
    }
    if let Some(v) = msg.header("Max-Forwards") {
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) || v.parse::<u32>().map_or(true, |n| n > 255) {
            return Err(bad("Max-Forwards", "not a number from 0 to 255"));
        }
    }
    if let Some(v) = msg.header("Expires") {
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) || v.parse::<u32>().is_err() {
            return Err(bad("Expires", "not a number of seconds below 2^32"));
        }
    }
    for via in msg.headers("Via") {
        for one in split_outside_quotes(via) {
            check_via(one)?;
        }
    }
    for (name, one) in [("From", true), ("To", true)] {
        let mut values = msg.headers(name);
        if let Some(v) = values.next() {
            check_address(name_static(name), v)?;
        }
        if one && values.next().is_some() {
            return Err(bad(name_static(name), "more than one"));
        }
    }
    for contact in msg.headers("Contact") {
        if contact.trim() == "*" {
            continue;
        }
        for one in split_outside_quotes(contact) {
            check_address("Contact", one)?;
        }
    }
    Ok(())
}

fn name_static(name: &str) -> &'static str {
    if name == "From" {
        "From"
    } else {
        "To"
    }
}

/// Splits a header value at commas that are outside quotes and `<>`.
fn split_outside_quotes(v: &str) -> impl Iterator<Item = &str> {
    let mut parts = Vec::new();
    let (mut quoted, mut angle, mut escaped, mut start) = (false, false, false, 0);
    for (i, c) in v.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            ',' if !quoted && !angle => {
                parts.push(&v[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&v[start..]);
    parts.into_iter()
}

/// `;name[=value]` parameters after an address or a sent-by: none may be empty.
fn check_params(header: &'static str, params: &str) -> Result<(), Error> {
    if params.trim().is_empty() {
        return Ok(());
    }
    let rest = params.trim_start().strip_prefix(';').ok_or(bad(header, "text after the address is not a parameter"))?;
    for p in rest.split(';') {
        let name = p.split('=').next().unwrap_or("").trim();
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(bad(header, "an empty or malformed parameter"));
        }
    }
    Ok(())
}

/// A via-parm: `SIP / 2.0 / transport sent-by *(; param)`.
fn check_via(v: &str) -> Result<(), Error> {
    let v = v.trim();
    if v.is_empty() {
        return Err(bad("Via", "an empty value"));
    }
    let proto = v.split(';').next().unwrap_or(v);
    let mut slash = proto.splitn(3, '/');
    let (Some(name), Some(version), Some(rest)) = (slash.next(), slash.next(), slash.next()) else {
        return Err(bad("Via", "not SIP/2.0/transport host"));
    };
    let rest = rest.trim_start();
    let (transport, host) = rest.split_once(|c: char| c.is_ascii_whitespace()).unwrap_or((rest, ""));
    if !name.trim().eq_ignore_ascii_case("SIP")
        || version.trim() != "2.0"
        || transport.is_empty()
        || !transport.bytes().all(is_token_byte)
        || host.trim().is_empty()
    {
        return Err(bad("Via", "not SIP/2.0/transport host"));
    }
    check_params("Via", &v[proto.len()..])
}

/// A name-addr (`["display"] <uri> *(;param)`) or an addr-spec (`uri *(;param)`).
fn check_address(header: &'static str, v: &str) -> Result<(), Error> {
    let v = v.trim();
    let after_display = if let Some(quoted) = v.strip_prefix('"') {
        let mut escaped = false;
        let mut close = None;
        for (i, c) in quoted.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => {
                    close = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let close = close.ok_or(bad(header, "an unterminated quoted display name"))?;
        let rest = quoted[close + 1..].trim_start();
        if !rest.starts_with('<') {
            return Err(bad(header, "a quoted display name without a <uri>"));
        }
        rest
    } else if let Some(lt) = v.find('<') {
        let display = &v[..lt];
        if !display.split_ascii_whitespace().all(|w| w.bytes().all(is_token_byte)) {
            return Err(bad(header, "a display name with non-token characters must be quoted"));
        }
        &v[lt..]
    } else {
        // addr-spec: the URI runs to the first ';' and may carry no headers (`?`).
        let raw = v.split(';').next().unwrap_or(v);
        let uri = raw.trim();
        if uri.is_empty() || uri.contains(['?', ',', '"', ' ', '\t', '>']) || !uri.contains(':') {
            return Err(bad(header, "a URI with headers or spaces must be written <uri>"));
        }
        return check_params(header, &v[raw.len()..]);
    };
    let inner = after_display.strip_prefix('<').ok_or(bad(header, "no <uri>"))?;
    let gt = inner.find('>').ok_or(bad(header, "an unterminated <uri>"))?;
    let uri = &inner[..gt];
    if uri.is_empty() || uri.contains(|c: char| c.is_ascii_whitespace()) || !uri.contains(':') {
        return Err(bad(header, "a <uri> with spaces or no scheme"));
    }
    check_params(header, &inner[gt + 1..])
}
