//! The pure side of a live INVITE: the SDP offer vigil sends a channel, the checks on the
//! device's answer (what to receive, from where, with which SSRC), and the `y=` SSRC sequence
//! (GB/T 28181 §3.7: realtime prefix 0, digits 4–8 of the SIP domain, a 4-digit sequence,
//! never reused within 30 s of its release).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use crate::clock::Millis;
use crate::protocol::ps::es::Codec;
use crate::protocol::sdp::{self, Direction, Media, RtpMap, Sdp, Setup, Transport};

/// How vigil asks for media (`gb28181.media_transport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaTransport {
    /// RTP over UDP to vigil's port.
    Udp,
    /// RTP over TCP (RFC 4571): vigil listens, the device connects (`a=setup:passive`).
    TcpPassive,
    /// RTP over TCP: the device listens, vigil connects (`a=setup:active`).
    TcpActive,
}

impl MediaTransport {
    pub fn as_str(self) -> &'static str {
        match self {
            MediaTransport::Udp => "udp",
            MediaTransport::TcpPassive => "tcp_passive",
            MediaTransport::TcpActive => "tcp_active",
        }
    }
}

/// A sequence released is not handed out again for this long.
pub const SSRC_QUARANTINE_MS: Millis = 30_000;

/// The live offer: PS over RTP (96), or H.264 (98) / H.265 (99) elementary streams for devices
/// that answer those, as WVP offers, to `ip:port` (UDP, or TCP with vigil's side of the
/// connection), `y=` `ssrc`. For TCP active the port says nothing (9, the discard port).
pub fn offer(gateway_id: &str, ip: IpAddr, port: u16, ssrc: &str, transport: MediaTransport) -> String {
    let family_address = ip.to_string();
    let (rtp, setup) = match transport {
        MediaTransport::Udp => (Transport::Udp, None),
        MediaTransport::TcpPassive => (Transport::Tcp, Some(Setup::Passive)),
        MediaTransport::TcpActive => (Transport::Tcp, Some(Setup::Active)),
    };
    Sdp {
        origin: gateway_id.to_owned(),
        address: family_address,
        session: "Play".into(),
        uri: None,
        times: (0, 0),
        media: vec![Media {
            kind: "video".into(),
            port: if transport == MediaTransport::TcpActive { 9 } else { port },
            transport: rtp,
            payloads: vec![96, 98, 99],
            rtpmaps: vec![
                RtpMap { payload: 96, encoding: "PS".into(), clock_rate: 90_000 },
                RtpMap { payload: 98, encoding: "H264".into(), clock_rate: 90_000 },
                RtpMap { payload: 99, encoding: "H265".into(), clock_rate: 90_000 },
            ],
            direction: Some(Direction::RecvOnly),
            setup,
            connection_new: rtp == Transport::Tcp,
            other: Vec::new(),
        }],
        ssrc: Some(ssrc.to_owned()),
        format: Some(String::new()),
    }
    .render()
}

/// What the RTP payload carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// MPEG program stream (GB/T 28181's own).
    Ps,
    /// An elementary stream over RTP (RFC 6184 / RFC 7798).
    Es(Codec),
}

/// What the answer settles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agreed {
    /// Where the device says it sends from (c= and m= port); media from elsewhere on the same
    /// host is accepted (devices send from another port than they write), from another host
    /// counted and dropped.
    pub from: SocketAddr,
    /// The SSRC to accept: the device's own `y=` when it wrote one (Hikvision and Dahua
    /// platforms do), else the one offered; `None` when neither is readable (learned from
    /// the first packet).
    pub ssrc: Option<u32>,
    /// The device answered another `y=` than the one offered.
    pub ssrc_rebound: bool,
    pub payload_type: u8,
    pub format: Format,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    #[error("the answer's SDP is unreadable: {0}")]
    Sdp(#[from] sdp::Error),
    #[error("the answer has no video description")]
    NoVideo,
    #[error("the answer carries {0}, none of the offered PS, H264 or H265")]
    Payload(String),
    #[error("the answer's address {0:?} is not an IP address")]
    Address(String),
    #[error("the answer asks for RTP over {answered} to an offer of {offered}")]
    Transport { offered: &'static str, answered: &'static str },
}

/// Reads the device's answer to an offer of `offered_ssrc` over `transport`.
pub fn check_answer(text: &str, offered_ssrc: u32, transport: MediaTransport) -> Result<Agreed, AnswerError> {
    let answer = Sdp::parse(text)?;
    let video = answer.video().ok_or(AnswerError::NoVideo)?;
    let name = |t: Transport| if t == Transport::Udp { "UDP" } else { "TCP" };
    let offered = if transport == MediaTransport::Udp { Transport::Udp } else { Transport::Tcp };
    if video.transport != offered {
        return Err(AnswerError::Transport { offered: name(offered), answered: name(video.transport) });
    }
    let es = |name| video.payload_of(name);
    let (payload_type, format) = match video.payload_of("PS").or_else(|| video.payload_of("MP2P")) {
        Some(pt) => (pt, Format::Ps),
        // Devices that answer a bare `m=video 9712 RTP/AVP 96` without an rtpmap send PS.
        None if video.rtpmaps.is_empty() && video.payloads.contains(&96) => (96, Format::Ps),
        None if es("H264").is_some() => (es("H264").unwrap_or(98), Format::Es(Codec::H264)),
        None if es("H265").or_else(|| es("HEVC")).is_some() => {
            (es("H265").or_else(|| es("HEVC")).unwrap_or(99), Format::Es(Codec::H265))
        }
        None => {
            let what =
                video.rtpmaps.first().map(|m| m.encoding.clone()).unwrap_or_else(|| format!("{:?}", video.payloads));
            return Err(AnswerError::Payload(what));
        }
    };
    let ip: IpAddr = answer.address.parse().map_err(|_| AnswerError::Address(answer.address.clone()))?;
    let theirs = answer.ssrc_value();
    Ok(Agreed {
        from: SocketAddr::new(ip, video.port),
        ssrc: theirs.or(Some(offered_ssrc)),
        ssrc_rebound: theirs.is_some_and(|t| t != offered_ssrc),
        payload_type,
        format,
    })
}

/// The 4-digit `y=` sequences: in use, and released with when.
#[derive(Debug, Default)]
pub struct Ssrcs {
    next: u32,
    in_use: HashSet<u32>,
    released: HashMap<u32, Millis>,
}

impl Ssrcs {
    /// A sequence neither in use nor released within `SSRC_QUARANTINE_MS` of `now`; `None`
    /// when all 10,000 are taken.
    pub fn take(&mut self, now: Millis) -> Option<u32> {
        self.released.retain(|_, at| now - *at < SSRC_QUARANTINE_MS);
        for _ in 0..10_000 {
            self.next = (self.next + 1) % 10_000;
            let n = self.next;
            if !self.in_use.contains(&n) && !self.released.contains_key(&n) {
                self.in_use.insert(n);
                return Some(n);
            }
        }
        None
    }

    pub fn release(&mut self, n: u32, now: Millis) {
        if self.in_use.remove(&n) {
            self.released.insert(n, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offer_is_a_gb_live_offer_of_ps() {
        let text =
            offer("42010400002000000001", "127.0.0.1".parse().expect("ip"), 30002, "0104000007", MediaTransport::Udp);
        let sdp = Sdp::parse(&text).expect("our own offer parses");
        let v = sdp.video().expect("video");
        assert_eq!((sdp.session.as_str(), v.port, v.direction), ("Play", 30002, Some(Direction::RecvOnly)));
        assert_eq!((v.payload_of("PS"), sdp.ssrc.as_deref()), (Some(96), Some("0104000007")));
        assert_eq!((v.payload_of("H264"), v.payload_of("H265")), (Some(98), Some(99)), "ES offered too, as WVP does");
        assert!(text.contains("\r\ny=0104000007\r\n") && text.contains("\r\nc=IN IP4 127.0.0.1\r\n"), "{text}");
        // TCP: who connects is said with a=setup, and the connection is a new one.
        let ip = "127.0.0.1".parse().expect("ip");
        let passive = Sdp::parse(&offer("g", ip, 30004, "0104000008", MediaTransport::TcpPassive)).expect("passive");
        let v = passive.video().expect("video");
        assert_eq!(
            (v.port, v.transport, v.setup, v.connection_new),
            (30004, Transport::Tcp, Some(Setup::Passive), true)
        );
        let active = Sdp::parse(&offer("g", ip, 30004, "0104000008", MediaTransport::TcpActive)).expect("active");
        let v = active.video().expect("video");
        assert_eq!((v.port, v.setup), (9, Some(Setup::Active)));
    }

    #[test]
    fn answers_are_read_for_their_ssrc_payload_and_source() {
        let a = "v=0\r\no=x 0 0 IN IP4 10.1.2.3\r\ns=Play\r\nc=IN IP4 10.1.2.3\r\nt=0 0\r\nm=video 9712 RTP/AVP 96\r\na=sendonly\r\na=rtpmap:96 PS/90000\r\ny=0104000007\r\n";
        let ok = check_answer(a, 104_000_007, MediaTransport::Udp).expect("a plain answer");
        assert_eq!(
            (ok.from, ok.ssrc, ok.ssrc_rebound),
            ("10.1.2.3:9712".parse().expect("addr"), Some(104_000_007), false)
        );
        // The device's own y= is the one its RTP carries.
        let own =
            check_answer(&a.replace("y=0104000007", "y=1100000123"), 104_000_007, MediaTransport::Udp).expect("own y=");
        assert_eq!((own.ssrc, own.ssrc_rebound), (Some(1_100_000_123), true));
        // No y= at all: the offered one stands.
        let none = check_answer(&a.replace("y=0104000007\r\n", ""), 42, MediaTransport::Udp).expect("no y=");
        assert_eq!((none.ssrc, none.ssrc_rebound), (Some(42), false));
        // Elementary streams: what the answer's rtpmap names, never misread as PS.
        let h264 = a.replace("96\r\n", "98\r\n").replace("96 PS/90000", "98 H264/90000");
        let es = check_answer(&h264, 1, MediaTransport::Udp).expect("H.264 ES");
        assert_eq!((es.payload_type, es.format), (98, Format::Es(Codec::H264)));
        let h265 = a.replace("PS/90000", "H265/90000");
        assert_eq!(check_answer(&h265, 1, MediaTransport::Udp).map(|x| x.format), Ok(Format::Es(Codec::H265)));
        assert_eq!(
            check_answer(&a.replace("PS/90000", "MPEG4/90000"), 1, MediaTransport::Udp),
            Err(AnswerError::Payload("MPEG4".into())),
            "a payload not offered is named"
        );
        assert_eq!(check_answer(&a.replace("m=video", "m=audio"), 1, MediaTransport::Udp), Err(AnswerError::NoVideo));
        assert!(matches!(check_answer("garbage", 1, MediaTransport::Udp), Err(AnswerError::Sdp(_))));
        assert!(matches!(
            check_answer(&a.replace("y=0104000007", "y=x12"), 1, MediaTransport::Udp),
            Err(AnswerError::Sdp(_))
        ));
        // The same SSRC without its leading zero is the same SSRC.
        let short = check_answer(&a.replace("y=0104000007", "y=104000007"), 104_000_007, MediaTransport::Udp);
        assert_eq!(short.map(|s| (s.ssrc, s.ssrc_rebound)), Ok((Some(104_000_007), false)));
        assert_eq!(
            check_answer(a, 1, MediaTransport::TcpPassive),
            Err(AnswerError::Transport { offered: "TCP", answered: "UDP" }),
            "a UDP answer to a TCP offer is named"
        );
        let tcp = a.replace("RTP/AVP", "TCP/RTP/AVP").replace("a=sendonly", "a=sendonly\r\na=setup:active");
        assert_eq!(check_answer(&tcp, 104_000_007, MediaTransport::TcpPassive).map(|x| x.from.port()), Ok(9712));
    }

    #[test]
    fn a_released_ssrc_is_not_handed_out_again_within_30_s() {
        let mut s = Ssrcs::default();
        let a = s.take(0).expect("one");
        let b = s.take(0).expect("two");
        assert_ne!(a, b);
        s.release(a, 1_000);
        // Every other sequence can be taken before `a` comes back.
        let mut seen = HashSet::new();
        for _ in 0..9_998 {
            seen.insert(s.take(2_000).expect("free"));
        }
        assert!(!seen.contains(&a) && !seen.contains(&b));
        assert_eq!(s.take(2_000), None, "all taken or quarantined");
        assert_eq!(s.take(1_000 + SSRC_QUARANTINE_MS), Some(a), "back after 30 s");
    }
}
