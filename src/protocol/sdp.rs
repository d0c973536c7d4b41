//! SDP (RFC 4566) as GB/T 28181 uses it in INVITE offers and answers, both directions: vigil
//! offers to its devices and answers its upper platforms. Besides the standard lines it reads
//! and writes the GB/T 28181 `y=` (the 10-digit decimal SSRC) and `f=` (media format) lines,
//! `a=setup` / `a=connection:new` for RTP over TCP (RFC 4145/4571), and the vendors' stream
//! selection attributes, kept as they came. Builds the `y=` SSRC as GB/T 28181 §3.7 says.
//! Pure: text in, typed value out; every list and line bounded.

use std::fmt::Write as _;

/// Lines accepted in one SDP body; longer lines are refused.
const MAX_LINES: usize = 128;
const MAX_LINE: usize = 1024;
/// Media descriptions and payload types per description.
const MAX_MEDIA: usize = 8;
const MAX_PAYLOADS: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("SDP line {line}: {why}")]
    Line { line: usize, why: &'static str },
    #[error("SDP has no {0} line")]
    Missing(&'static str),
    #[error("SDP is over its bounds ({0})")]
    TooLarge(&'static str),
    #[error("y= SSRC {0:?} is not a decimal number of at most 10 digits below 2^32")]
    Ssrc(String),
}

/// How RTP is carried for a media description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `RTP/AVP`: RTP over UDP.
    Udp,
    /// `TCP/RTP/AVP`: RTP over TCP with the RFC 4571 two-byte length.
    Tcp,
}

/// `a=setup:` (RFC 4145): who opens the TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// This side listens; the peer connects.
    Passive,
    /// This side connects to the peer's port.
    Active,
    ActPass,
}

/// Which way media flows, from the writer's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    RecvOnly,
    SendOnly,
    SendRecv,
    Inactive,
}

/// One `a=rtpmap:` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpMap {
    pub payload: u8,
    /// As written (`PS`, `H264`, `H265`, `MPEG4`, `PCMA`): map by name, never by number alone.
    pub encoding: String,
    pub clock_rate: u32,
}

/// One `m=` description with its attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    /// `video` or `audio`.
    pub kind: String,
    pub port: u16,
    pub transport: Transport,
    pub payloads: Vec<u8>,
    pub rtpmaps: Vec<RtpMap>,
    pub direction: Option<Direction>,
    pub setup: Option<Setup>,
    /// `a=connection:new`.
    pub connection_new: bool,
    /// Other attributes as written (`streamprofile:0`, `downloadspeed:8`, `streamMode:MAIN`).
    pub other: Vec<String>,
}

impl Media {
    /// The payload type carrying `encoding` (case-insensitive), where the rtpmap lists it.
    pub fn payload_of(&self, encoding: &str) -> Option<u8> {
        self.rtpmaps.iter().find(|m| m.encoding.eq_ignore_ascii_case(encoding)).map(|m| m.payload)
    }
}

/// A GB/T 28181 session description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sdp {
    /// `o=` username: the writer's 20-digit id by convention.
    pub origin: String,
    /// `o=` and `c=` address (IPv4 or IPv6, as text).
    pub address: String,
    /// `s=`: `Play`, `Playback`, `Download`, `Talk`.
    pub session: String,
    /// `u=` (playback and download: `<channel id>:<type>`).
    pub uri: Option<String>,
    /// `t=` start and stop (0 0 for live).
    pub times: (u64, u64),
    pub media: Vec<Media>,
    /// `y=`: the 10-digit SSRC as written.
    pub ssrc: Option<String>,
    /// `f=`: the media format line as written.
    pub format: Option<String>,
}

impl Sdp {
    /// The first video description.
    pub fn video(&self) -> Option<&Media> {
        self.media.iter().find(|m| m.kind == "video")
    }

    /// `y=` as the number RTP carries in its header (`0200000001` → 200000001).
    pub fn ssrc_value(&self) -> Option<u32> {
        self.ssrc.as_deref().and_then(|s| ssrc_value(s).ok())
    }

    /// Reads an SDP body (CRLF or LF lines).
    pub fn parse(text: &str) -> Result<Sdp, Error> {
        let mut sdp = Sdp {
            origin: String::new(),
            address: String::new(),
            session: String::new(),
            uri: None,
            times: (0, 0),
            media: Vec::new(),
            ssrc: None,
            format: None,
        };
        let (mut seen_v, mut seen_o) = (false, false);
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            if line > MAX_LINES {
                return Err(Error::TooLarge("lines"));
            }
            if raw.len() > MAX_LINE {
                return Err(Error::Line { line, why: "longer than 1024 bytes" });
            }
            let raw = raw.trim_end_matches('\r').trim();
            if raw.is_empty() {
                continue;
            }
            let bad = |why| Error::Line { line, why };
            let (key, value) = raw.split_once('=').ok_or(bad("not key=value"))?;
            match key {
                "v" if value == "0" => seen_v = true,
                "v" => return Err(bad("version is not 0")),
                "o" => {
                    let f: Vec<&str> = value.split_whitespace().collect();
                    if f.len() != 6 {
                        return Err(bad("o= needs 6 fields"));
                    }
                    sdp.origin = f[0].to_owned();
                    if sdp.address.is_empty() {
                        sdp.address = f[5].to_owned();
                    }
                    seen_o = true;
                }
                "s" => sdp.session = value.to_owned(),
                "u" => sdp.uri = Some(value.to_owned()),
                "c" => {
                    let f: Vec<&str> = value.split_whitespace().collect();
                    if f.len() != 3 || f[0] != "IN" {
                        return Err(bad("c= is not IN IP4|IP6 address"));
                    }
                    sdp.address = f[2].to_owned();
                }
                "t" => {
                    let mut f = value.split_whitespace().map(str::parse::<u64>);
                    match (f.next(), f.next()) {
                        (Some(Ok(a)), Some(Ok(b))) => sdp.times = (a, b),
                        _ => return Err(bad("t= is not two numbers")),
                    }
                }
                "m" => {
                    if sdp.media.len() == MAX_MEDIA {
                        return Err(Error::TooLarge("media descriptions"));
                    }
                    sdp.media.push(media_line(value).map_err(bad)?);
                }
                "a" => {
                    let Some(m) = sdp.media.last_mut() else { continue };
                    attribute(m, value).map_err(bad)?;
                }
                "y" => {
                    ssrc_value(value)?;
                    sdp.ssrc = Some(value.to_owned());
                }
                "f" => sdp.format = Some(value.to_owned()),
                _ => {}
            }
        }
        if !seen_v {
            return Err(Error::Missing("v="));
        }
        if !seen_o {
            return Err(Error::Missing("o="));
        }
        if sdp.media.is_empty() {
            return Err(Error::Missing("m="));
        }
        Ok(sdp)
    }

    /// Writes the body (CRLF lines), in the order devices expect.
    pub fn render(&self) -> String {
        let ip = if self.address.contains(':') { "IP6" } else { "IP4" };
        let mut out = String::new();
        let _ = write!(out, "v=0\r\no={} 0 0 IN {ip} {}\r\ns={}\r\n", self.origin, self.address, self.session);
        if let Some(u) = &self.uri {
            let _ = write!(out, "u={u}\r\n");
        }
        let _ = write!(out, "c=IN {ip} {}\r\nt={} {}\r\n", self.address, self.times.0, self.times.1);
        for m in &self.media {
            let proto = match m.transport {
                Transport::Udp => "RTP/AVP",
                Transport::Tcp => "TCP/RTP/AVP",
            };
            let pts: Vec<String> = m.payloads.iter().map(u8::to_string).collect();
            let _ = write!(out, "m={} {} {proto} {}\r\n", m.kind, m.port, pts.join(" "));
            if let Some(d) = m.direction {
                let d = match d {
                    Direction::RecvOnly => "recvonly",
                    Direction::SendOnly => "sendonly",
                    Direction::SendRecv => "sendrecv",
                    Direction::Inactive => "inactive",
                };
                let _ = write!(out, "a={d}\r\n");
            }
            for r in &m.rtpmaps {
                let _ = write!(out, "a=rtpmap:{} {}/{}\r\n", r.payload, r.encoding, r.clock_rate);
            }
            if let Some(s) = m.setup {
                let s = match s {
                    Setup::Passive => "passive",
                    Setup::Active => "active",
                    Setup::ActPass => "actpass",
                };
                let _ = write!(out, "a=setup:{s}\r\n");
            }
            if m.connection_new {
                out.push_str("a=connection:new\r\n");
            }
            for o in &m.other {
                let _ = write!(out, "a={o}\r\n");
            }
        }
        if let Some(y) = &self.ssrc {
            let _ = write!(out, "y={y}\r\n");
        }
        if let Some(f) = &self.format {
            let _ = write!(out, "f={f}\r\n");
        }
        out
    }
}

fn media_line(value: &str) -> Result<Media, &'static str> {
    let f: Vec<&str> = value.split_whitespace().collect();
    if f.len() < 4 {
        return Err("m= needs kind, port, transport and payload types");
    }
    let port = f[1].split('/').next().and_then(|p| p.parse().ok()).ok_or("m= port is not a number")?;
    let transport = match f[2].to_ascii_uppercase().as_str() {
        "RTP/AVP" => Transport::Udp,
        "TCP/RTP/AVP" | "RTP/AVP/TCP" => Transport::Tcp,
        _ => return Err("m= transport is not RTP/AVP or TCP/RTP/AVP"),
    };
    if f.len() - 3 > MAX_PAYLOADS {
        return Err("m= lists more than 16 payload types");
    }
    let payloads = f[3..].iter().map(|p| p.parse::<u8>()).collect::<Result<_, _>>().map_err(|_| "m= payload type")?;
    Ok(Media {
        kind: f[0].to_owned(),
        port,
        transport,
        payloads,
        rtpmaps: Vec::new(),
        direction: None,
        setup: None,
        connection_new: false,
        other: Vec::new(),
    })
}

fn attribute(m: &mut Media, value: &str) -> Result<(), &'static str> {
    let (name, arg) = value.split_once(':').unwrap_or((value, ""));
    match name {
        "recvonly" => m.direction = Some(Direction::RecvOnly),
        "sendonly" => m.direction = Some(Direction::SendOnly),
        "sendrecv" => m.direction = Some(Direction::SendRecv),
        "inactive" => m.direction = Some(Direction::Inactive),
        "rtpmap" => {
            if m.rtpmaps.len() == MAX_PAYLOADS {
                return Err("more than 16 rtpmaps");
            }
            let (pt, rest) = arg.split_once(' ').ok_or("rtpmap is not \"PT name/rate\"")?;
            let mut parts = rest.trim().split('/');
            let encoding = parts.next().filter(|e| !e.is_empty()).ok_or("rtpmap has no encoding")?;
            let clock_rate = parts.next().and_then(|r| r.parse().ok()).ok_or("rtpmap clock rate")?;
            let payload = pt.trim().parse().map_err(|_| "rtpmap payload type")?;
            m.rtpmaps.push(RtpMap { payload, encoding: encoding.to_owned(), clock_rate });
        }
        "setup" => {
            m.setup = Some(match arg.trim() {
                "passive" => Setup::Passive,
                "active" => Setup::Active,
                "actpass" => Setup::ActPass,
                _ => return Err("setup is not passive, active or actpass"),
            })
        }
        "connection" => m.connection_new = arg.trim() == "new",
        _ => {
            if m.other.len() < MAX_PAYLOADS {
                m.other.push(value.to_owned());
            }
        }
    }
    Ok(())
}

/// A `y=` SSRC as the number RTP carries. The standard writes 10 digits; devices that format
/// it as a number drop the leading zero (`y=104000001`, the gb28181-rs device among them), so
/// 1 to 10 digits are read. vigil always writes 10.
pub fn ssrc_value(y: &str) -> Result<u32, Error> {
    if y.is_empty() || y.len() > 10 || !y.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::Ssrc(y.to_owned()));
    }
    y.parse::<u64>().ok().and_then(|v| u32::try_from(v).ok()).ok_or_else(|| Error::Ssrc(y.to_owned()))
}

/// The `y=` SSRC GB/T 28181 §3.7 prescribes: `0` live or `1` history, digits 4–8 of the SIP
/// domain id, then a 4-digit stream sequence (taken modulo 10,000). `None` when the domain is
/// shorter than 8 digits or not digits.
pub fn build_ssrc(history: bool, domain: &str, sequence: u32) -> Option<String> {
    let d = domain.get(3..8).filter(|d| d.bytes().all(|b| b.is_ascii_digit()))?;
    Some(format!("{}{d}{:04}", u8::from(history), sequence % 10_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TV7 of the protocol notes: a live offer and a device's answer, as captured.
    const OFFER: &str = "v=0\r\no=34020000002000000001 0 0 IN IP4 192.168.0.107\r\ns=Play\r\nc=IN IP4 192.168.0.107\r\nt=0 0\r\nm=video 36000 RTP/AVP 96 98 97\r\na=recvonly\r\na=rtpmap:96 PS/90000\r\na=rtpmap:98 H264/90000\r\na=rtpmap:97 MPEG4/90000\r\ny=0100000001\r\n";
    const ANSWER: &str = "v=0\no=34020000001310000002 0 0 IN IP4 192.168.0.111\ns=Play\ni=VCam Live Video\nc=IN IP4 192.168.0.111\nt=0 0\nm=video 9712 RTP/AVP 96\na=sendonly\na=rtpmap:96 PS/90000\na=streamprofile:0\ny=0100000001\nf=v/0/0/0/0/0a/0/0/0\n";
    /// TV8: a download offer over TCP, passive.
    const DOWNLOAD: &str = "v=0\r\no=34000000002000000001 0 0 IN IP4 192.168.100.100\r\ns=Download\r\nu=34020000001310000001:3\r\nc=IN IP4 192.168.100.100\r\nt=1498173736 1498174066\r\nm=video 10122 TCP/RTP/AVP 96 98 97\r\na=recvonly\r\na=rtpmap:96 PS/90000\r\na=rtpmap:98 H264/90000\r\na=rtpmap:97 MPEG4/90000\r\na=setup:passive\r\na=connection:new\r\na=downloadspeed:8\r\ny=1000000025\r\n";

    #[test]
    fn captured_offers_and_answers_read_and_write_back_the_same() {
        let offer = Sdp::parse(OFFER).expect("offer");
        assert_eq!(offer.render(), OFFER, "an offer vigil writes is byte for byte what devices are sent");
        let v = offer.video().expect("video");
        assert_eq!((v.port, v.transport, v.direction), (36000, Transport::Udp, Some(Direction::RecvOnly)));
        assert_eq!((v.payload_of("ps"), v.payload_of("H264"), v.payload_of("H265")), (Some(96), Some(98), None));
        assert_eq!(offer.ssrc_value(), Some(100_000_001));

        let answer = Sdp::parse(ANSWER).expect("answer");
        assert_eq!((answer.origin.as_str(), answer.address.as_str()), ("34020000001310000002", "192.168.0.111"));
        let v = answer.video().expect("video");
        assert_eq!(
            (v.port, v.direction, v.other.as_slice()),
            (9712, Some(Direction::SendOnly), &["streamprofile:0".to_owned()][..])
        );
        assert_eq!(answer.format.as_deref(), Some("v/0/0/0/0/0a/0/0/0"));

        let dl = Sdp::parse(DOWNLOAD).expect("download");
        assert_eq!(dl.render(), DOWNLOAD);
        let v = dl.video().expect("video");
        assert_eq!((v.transport, v.setup, v.connection_new), (Transport::Tcp, Some(Setup::Passive), true));
        assert_eq!((dl.times, dl.uri.as_deref()), ((1_498_173_736, 1_498_174_066), Some("34020000001310000001:3")));
    }

    #[test]
    fn what_devices_must_not_be_sent_or_believed_is_refused_by_line() {
        for (text, why) in [
            ("v=0\r\no=a 0 0 IN IP4 1.2.3.4\r\ns=Play\r\n", "no media"),
            ("o=a 0 0 IN IP4 1.2.3.4\r\nm=video 1 RTP/AVP 96\r\n", "no version"),
            ("v=0\r\no=a 0 0 IN IP4 1.2.3.4\r\nm=video 70000 RTP/AVP 96\r\n", "port past 65535"),
            ("v=0\r\no=a 0 0 IN IP4 1.2.3.4\r\nm=video 1 SCTP 96\r\n", "not RTP"),
            ("v=0\r\no=a 0 0 IN IP4 1.2.3.4\r\nm=video 1 RTP/AVP 96\r\ny=01234567890\r\n", "11-digit y="),
            ("v=0\r\no=a 0 0 IN IP4 1.2.3.4\r\nm=video 1 RTP/AVP 96\r\ny=0x1234\r\n", "hex y="),
            ("v=0\r\no=a 0 0 IN IP4 1.2.3.4\r\nm=video 1 RTP/AVP 96\r\ny=9999999999\r\n", "y= past u32"),
            ("v=0\r\no=a 0 0 IN IP4 1.2.3.4\r\nm=video 1 RTP/AVP 96\r\na=rtpmap:300 PS/90000\r\n", "PT 300"),
            ("v=0\r\no=a 0 0\r\nm=video 1 RTP/AVP 96\r\n", "short o="),
        ] {
            assert!(Sdp::parse(text).is_err(), "{why}: {text:?}");
        }
        let long = format!("v=0\r\n{}", "a=x\r\n".repeat(200));
        assert_eq!(Sdp::parse(&long), Err(Error::TooLarge("lines")));
        let many = format!("v=0\r\no=a 0 0 IN IP4 1.2.3.4\r\nm=video 1 RTP/AVP {}\r\n", "96 ".repeat(17));
        assert!(Sdp::parse(&many).is_err(), "17 payload types");
    }

    #[test]
    fn the_ssrc_is_built_from_the_domain_as_the_standard_says() {
        assert_eq!(build_ssrc(false, "3402000000", 1).as_deref(), Some("0200000001"));
        assert_eq!(build_ssrc(true, "4201040000", 25).as_deref(), Some("1104000025"));
        assert_eq!(build_ssrc(false, "4201040000", 10_007).as_deref(), Some("0104000007"), "wraps at 10,000");
        assert_eq!(build_ssrc(false, "42010", 1), None);
        assert_eq!(ssrc_value("0200000001"), Ok(200_000_001));
        assert_eq!(ssrc_value("104000001"), Ok(104_000_001), "the leading zero dropped, as devices do");
        assert!(ssrc_value("").is_err() && ssrc_value("4294967296").is_err());
        let y = build_ssrc(false, "34020000002000000001", 9999).expect("20-digit id");
        assert_eq!(y, "0200009999");
        assert!(ssrc_value(&y).is_ok());
    }
}
