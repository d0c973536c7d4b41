//! The few MQTT 3.1.1 packets the embedded broker's gate reads and writes (OASIS MQTT 3.1.1
//! §2–3): the fixed header and its remaining length, CONNECT (read whole, written back with
//! another client id and credentials), the topic and flags of a PUBLISH, the filters of a
//! SUBSCRIBE, and CONNACK. Pure: bytes in, typed values out; every length is checked against
//! what is there, nothing from the wire is trusted.

/// Packet types (the high nibble of the first byte).
pub const CONNECT: u8 = 1;
pub const PUBLISH: u8 = 3;
pub const SUBSCRIBE: u8 = 8;

/// CONNACK return codes.
pub const ACCEPTED: u8 = 0;
pub const BAD_PROTOCOL: u8 = 1;
pub const IDENTIFIER_REJECTED: u8 = 2;
pub const BAD_CREDENTIALS: u8 = 4;
pub const NOT_AUTHORIZED: u8 = 5;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("remaining length is not a valid variable byte integer")]
    Length,
    #[error("packet of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("packet ends inside a field")]
    Truncated,
    #[error("a string is not UTF-8")]
    Utf8,
    #[error("not MQTT 3.1.1 (protocol {name:?} level {level})")]
    Protocol { name: String, level: u8 },
    #[error("malformed {0}")]
    Malformed(&'static str),
}

/// The remaining length encoded at the start of `b` (after the first byte): `Ok(None)` when
/// more bytes are needed, `Ok(Some((length, bytes it took)))` otherwise.
pub fn remaining_length(b: &[u8]) -> Result<Option<(usize, usize)>, Error> {
    let mut value = 0usize;
    for (i, byte) in b.iter().take(4).enumerate() {
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if b.len() >= 4 {
        Err(Error::Length)
    } else {
        Ok(None)
    }
}

/// The remaining-length bytes for `len`.
pub fn encode_length(mut len: usize, out: &mut Vec<u8>) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
}

/// A cursor over a packet's body.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Result<u8, Error> {
        let v = *self.b.get(self.at).ok_or(Error::Truncated)?;
        self.at += 1;
        Ok(v)
    }

    fn u16(&mut self) -> Result<u16, Error> {
        Ok(u16::from(self.u8()?) << 8 | u16::from(self.u8()?))
    }

    fn bytes(&mut self) -> Result<&'a [u8], Error> {
        let n = usize::from(self.u16()?);
        let end = self.at.checked_add(n).filter(|&e| e <= self.b.len()).ok_or(Error::Truncated)?;
        let v = &self.b[self.at..end];
        self.at = end;
        Ok(v)
    }

    fn string(&mut self) -> Result<&'a str, Error> {
        std::str::from_utf8(self.bytes()?).map_err(|_| Error::Utf8)
    }
}

/// A CONNECT as the gate needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub clean_session: bool,
    pub keep_alive: u16,
    pub client_id: String,
    /// (topic, payload, qos, retain).
    pub will: Option<(String, Vec<u8>, u8, bool)>,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
}

impl Connect {
    /// Reads a CONNECT body (after the fixed header).
    pub fn parse(body: &[u8]) -> Result<Connect, Error> {
        let mut r = Reader { b: body, at: 0 };
        let name = r.string()?.to_owned();
        let level = r.u8()?;
        if name != "MQTT" || level != 4 {
            return Err(Error::Protocol { name, level });
        }
        let flags = r.u8()?;
        if flags & 0x01 != 0 {
            return Err(Error::Malformed("CONNECT flags (reserved bit set)"));
        }
        let keep_alive = r.u16()?;
        let client_id = r.string()?.to_owned();
        let will = if flags & 0x04 != 0 {
            let topic = r.string()?.to_owned();
            let payload = r.bytes()?.to_vec();
            Some((topic, payload, (flags >> 3) & 0x03, flags & 0x20 != 0))
        } else {
            None
        };
        let username = if flags & 0x80 != 0 { Some(r.string()?.to_owned()) } else { None };
        let password = if flags & 0x40 != 0 { Some(r.bytes()?.to_vec()) } else { None };
        if r.at != body.len() {
            return Err(Error::Malformed("CONNECT (bytes after the payload)"));
        }
        Ok(Connect { clean_session: flags & 0x02 != 0, keep_alive, client_id, will, username, password })
    }

    /// The whole packet (fixed header included).
    pub fn encode(&self) -> Vec<u8> {
        let field = |out: &mut Vec<u8>, b: &[u8]| {
            out.extend_from_slice(&(b.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
            out.extend_from_slice(&b[..b.len().min(usize::from(u16::MAX))]);
        };
        let mut flags = 0u8;
        if self.clean_session {
            flags |= 0x02;
        }
        if let Some((_, _, qos, retain)) = &self.will {
            flags |= 0x04 | ((qos & 0x03) << 3);
            if *retain {
                flags |= 0x20;
            }
        }
        if self.username.is_some() {
            flags |= 0x80;
        }
        if self.password.is_some() {
            flags |= 0x40;
        }
        let mut body = Vec::with_capacity(64);
        field(&mut body, b"MQTT");
        body.extend_from_slice(&[4, flags]);
        body.extend_from_slice(&self.keep_alive.to_be_bytes());
        field(&mut body, self.client_id.as_bytes());
        if let Some((topic, payload, _, _)) = &self.will {
            field(&mut body, topic.as_bytes());
            field(&mut body, payload);
        }
        if let Some(u) = &self.username {
            field(&mut body, u.as_bytes());
        }
        if let Some(p) = &self.password {
            field(&mut body, p);
        }
        let mut out = vec![CONNECT << 4];
        encode_length(body.len(), &mut out);
        out.extend_from_slice(&body);
        out
    }
}

/// A PUBLISH's topic, QoS, retain flag and payload (`flags`: the low nibble of its first
/// byte).
pub fn publish(flags: u8, body: &[u8]) -> Result<(&str, u8, bool, &[u8]), Error> {
    let mut r = Reader { b: body, at: 0 };
    let topic = r.string()?;
    let qos = (flags >> 1) & 0x03;
    if qos == 3 {
        return Err(Error::Malformed("PUBLISH (QoS 3)"));
    }
    if qos > 0 {
        r.u16()?;
    }
    Ok((topic, qos, flags & 0x01 != 0, &body[r.at..]))
}

/// A SUBSCRIBE's topic filters.
pub fn subscribe_filters(body: &[u8]) -> Result<Vec<&str>, Error> {
    let mut r = Reader { b: body, at: 0 };
    r.u16()?; // packet id
    let mut out = Vec::new();
    while r.at < body.len() {
        out.push(r.string()?);
        r.u8()?; // requested QoS
    }
    if out.is_empty() {
        return Err(Error::Malformed("SUBSCRIBE (no filter)"));
    }
    Ok(out)
}

/// A CONNACK with `code` (session present: 0).
pub fn connack(code: u8) -> [u8; 4] {
    [0x20, 2, 0, code]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_lengths_round_trip_and_bad_ones_are_refused() {
        for len in [0usize, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152, 268_435_455] {
            let mut b = Vec::new();
            encode_length(len, &mut b);
            assert_eq!(remaining_length(&b), Ok(Some((len, b.len()))), "{len}");
            assert_eq!(remaining_length(&b[..b.len() - 1]), Ok(None), "{len}: one byte short");
        }
        assert_eq!(remaining_length(&[0x80, 0x80, 0x80, 0x80, 0x01]), Err(Error::Length));
    }

    #[test]
    fn a_connect_reads_and_writes_back_with_other_credentials() {
        let c = Connect {
            clean_session: false,
            keep_alive: 30,
            client_id: "FX1234567".into(),
            will: Some(("hik/XQ001/FX1234567/status".into(), b"offline".to_vec(), 1, true)),
            username: Some("FX1234567".into()),
            password: Some(b"12345678".to_vec()),
        };
        let wire = c.encode();
        assert_eq!(wire[0], 0x10);
        let (len, n) = remaining_length(&wire[1..]).expect("length").expect("whole");
        assert_eq!(1 + n + len, wire.len());
        let back = Connect::parse(&wire[1 + n..]).expect("parses");
        assert_eq!(back, c);
        // Without will and credentials too.
        let bare = Connect { will: None, username: None, password: None, ..c };
        let wire = bare.encode();
        assert_eq!(Connect::parse(&wire[2..]).expect("parses"), bare);
    }

    #[test]
    fn what_is_not_a_3_1_1_connect_is_refused_not_panicked_on() {
        let c = Connect {
            clean_session: true,
            keep_alive: 0,
            client_id: "x".into(),
            will: None,
            username: Some("u".into()),
            password: None,
        };
        let wire = c.encode();
        let body = &wire[2..];
        for cut in 0..body.len() {
            assert!(Connect::parse(&body[..cut]).is_err(), "cut at {cut}");
        }
        let mut v5 = body.to_vec();
        v5[6] = 5;
        assert!(matches!(Connect::parse(&v5), Err(Error::Protocol { level: 5, .. })));
        let mut reserved = body.to_vec();
        reserved[7] |= 1;
        assert!(Connect::parse(&reserved).is_err());
    }

    #[test]
    fn publish_and_subscribe_bodies() {
        let mut body = vec![0, 5];
        body.extend_from_slice(b"a/b/c");
        body.extend_from_slice(&[0, 7]);
        body.extend_from_slice(b"{}");
        assert_eq!(publish(0b0011, &body), Ok(("a/b/c", 1, true, &b"{}"[..])));
        assert_eq!(publish(0b0000, &body[..7]), Ok(("a/b/c", 0, false, &b""[..])));
        assert!(publish(0b0110, &body).is_err(), "QoS 3");
        assert!(publish(0b0010, &body[..3]).is_err());
        let mut sub = vec![0, 1, 0, 3];
        sub.extend_from_slice(b"x/#");
        sub.push(1);
        assert_eq!(subscribe_filters(&sub), Ok(vec!["x/#"]));
        assert!(subscribe_filters(&sub[..4]).is_err());
        assert!(subscribe_filters(&[0, 1]).is_err());
    }
}
