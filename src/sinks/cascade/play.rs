//! The upper platform's INVITEs (`s=Play`) as the cascade's user agent serves them: the
//! dialogs by Call-ID, their answers and timers. A channel outside the upper's scope is 404,
//! an offer without `y=` 400 (unless the upstream picks the SSRC), a malformed one 400 with
//! the reason; otherwise 100 at once, and 200 (`a=sendonly`, the upper's `y=`) once the play
//! task (`forward`) has a keyframe and a media socket, retransmitted until the ACK. The ACK
//! starts the media; a BYE or CANCEL from the upper stops it; the play ending on vigil's side
//! (no ACK in 60 s, the source gone, the media connection closed) sends a BYE upward.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::catalog::Video;
use super::forward::{self, Event};
use crate::clock::Millis;
use crate::protocol::sip::message::{self, Message};
use crate::protocol::sip::transactions::{T1_MS, T2_MS};

/// Plays at once per upper; past it an INVITE is answered 486.
const MAX_PLAYS: usize = 512;
/// A 200 is retransmitted until the ACK for this long (64 × T1).
const ANSWER_RETRANSMIT_MS: Millis = 64 * T1_MS;

/// A message to send and where.
pub struct Out {
    pub bytes: Vec<u8>,
    pub to: SocketAddr,
}

/// A BYE to send as a client transaction.
pub struct Bye {
    pub branch: String,
    pub bytes: Vec<u8>,
    pub to: SocketAddr,
}

struct Dialog {
    /// The INVITE as it came (answers are built from it).
    invite: Vec<u8>,
    from: SocketAddr,
    tag: String,
    /// The last answer sent (sent again on a retransmitted INVITE).
    last: Vec<u8>,
    /// The 200 awaiting its ACK: when to send it again, the interval, until when.
    resend: Option<(Millis, Millis, Millis)>,
    ack: Option<oneshot::Sender<()>>,
    cancel: CancellationToken,
}

/// The plays of one upper.
pub struct Plays {
    dialogs: HashMap<String, Dialog>,
    media: Option<Arc<forward::Media>>,
    events: mpsc::Sender<Event>,
    pick_ssrc: bool,
    next_ssrc: u32,
    /// vigil's `user@host:port` for Contact and Via.
    user: String,
    advertise: String,
    transport: super::link::Transport,
    cseq: u32,
}

impl Plays {
    /// The plays, and where their tasks' events arrive (the UA passes each to `event`).
    pub fn new(
        media: Option<Arc<forward::Media>>,
        pick_ssrc: bool,
        user: String,
        advertise: String,
        transport: super::link::Transport,
    ) -> (Plays, mpsc::Receiver<Event>) {
        let (events, rx) = mpsc::channel(64);
        let plays = Plays {
            dialogs: HashMap::new(),
            media,
            events,
            pick_ssrc,
            next_ssrc: 1,
            user,
            advertise,
            transport,
            cseq: 0,
        };
        (plays, rx)
    }

    /// Plays running or being set up.
    pub fn len(&self) -> usize {
        self.dialogs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.dialogs.is_empty()
    }

    /// A retransmitted INVITE: the answer sent last, again.
    pub fn again(&self, msg: &Message<'_>) -> Option<Vec<u8>> {
        let d = self.dialogs.get(msg.header("Call-ID")?)?;
        Some(d.last.clone())
    }

    /// A new INVITE for the channel the wiring found (`None`: not in the upper's scope;
    /// `Some(None)`: in scope without video). The immediate answer.
    pub fn invite(
        &mut self,
        msg: &Message<'_>,
        raw: &[u8],
        from: SocketAddr,
        found: Option<Option<Video>>,
        cancel: &CancellationToken,
    ) -> Vec<u8> {
        let tag = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
        let refuse = |code: u16, reason: &str| message::response(msg, code, reason, from, &tag, &[], b"");
        let channel = match &msg.start {
            message::StartLine::Request { uri, .. } => message::uri_user(uri).unwrap_or("").to_owned(),
            _ => String::new(),
        };
        let Some(call_id) = msg.header("Call-ID").map(str::to_owned) else {
            return refuse(400, "Bad Request (no Call-ID)");
        };
        let Some(found) = found else {
            debug!(channel = %channel, "INVITE from the upper platform for a channel it does not see: 404.");
            return refuse(404, "Not Found");
        };
        let Some(video) = found else {
            return refuse(488, "Not Acceptable Here (the channel has no video)");
        };
        let Some(media) = self.media.clone() else {
            return refuse(488, "Not Acceptable Here (no video pipeline)");
        };
        if self.dialogs.len() >= MAX_PLAYS {
            return refuse(486, "Busy Here (too many plays)");
        }
        let picked = self.pick_ssrc.then(|| {
            self.next_ssrc = self.next_ssrc.wrapping_add(1);
            self.next_ssrc
        });
        let offer = match forward::read_offer(msg.body, &channel, video, picked) {
            Ok(o) => o,
            Err((code, reason)) => {
                debug!(channel = %channel, code, reason = %reason, "INVITE from the upper platform refused.");
                return refuse(code, &reason);
            }
        };
        let trying = message::response(msg, 100, "Trying", from, &tag, &[], b"");
        let (ack_tx, ack_rx) = oneshot::channel();
        let token = cancel.child_token();
        let local: IpAddr = self
            .advertise
            .rsplit_once(':')
            .and_then(|(h, _)| h.trim_matches(['[', ']']).parse().ok())
            .unwrap_or(IpAddr::from([127, 0, 0, 1]));
        info!(channel = %channel, to = %offer.to, "The upper platform asks to play a channel.");
        tokio::spawn(forward::run(media, call_id.clone(), offer, local, ack_rx, self.events.clone(), token.clone()));
        self.dialogs.insert(
            call_id,
            Dialog {
                invite: raw.to_vec(),
                from,
                tag,
                last: trying.clone(),
                resend: None,
                ack: Some(ack_tx),
                cancel: token,
            },
        );
        trying
    }

    /// The upper's ACK: the media starts.
    pub fn ack(&mut self, msg: &Message<'_>) {
        let Some(d) = msg.header("Call-ID").and_then(|c| self.dialogs.get_mut(c)) else { return };
        d.resend = None;
        if let Some(tx) = d.ack.take() {
            let _ = tx.send(());
        }
    }

    /// The upper's BYE or CANCEL: the play stops. The answers to send.
    pub fn stop(&mut self, msg: &Message<'_>, from: SocketAddr, method: &str) -> Vec<Out> {
        let call = msg.header("Call-ID").unwrap_or("");
        let Some(d) = self.dialogs.get(call) else {
            let tag = "0";
            return vec![Out {
                bytes: message::response(msg, 481, "Call/Transaction Does Not Exist", from, tag, &[], b""),
                to: from,
            }];
        };
        let mut out = Vec::new();
        if method == "CANCEL" {
            if d.resend.is_some() || d.ack.is_none() {
                // Answered already: CANCEL does nothing (RFC 3261 §9.2); the upper sends BYE.
                return vec![Out { bytes: message::response(msg, 200, "OK", from, &d.tag, &[], b""), to: from }];
            }
            out.push(Out { bytes: message::response(msg, 200, "OK", from, &d.tag, &[], b""), to: from });
            if let Ok(invite) = Message::parse(&d.invite) {
                out.push(Out {
                    bytes: message::response(&invite, 487, "Request Terminated", d.from, &d.tag, &[], b""),
                    to: d.from,
                });
            }
        } else {
            out.push(Out { bytes: message::response(msg, 200, "OK", from, &d.tag, &[], b""), to: from });
        }
        if let Some(d) = self.dialogs.remove(call) {
            d.cancel.cancel();
            info!(call_id = call, "The upper platform stopped a play ({method}).");
        }
        out
    }

    /// What a play task says: the 200 to send, a refusal, or a BYE to send.
    pub fn event(&mut self, e: Event, now: Millis) -> (Option<Out>, Option<Bye>) {
        match e {
            Event::Answer { call_id, sdp } => {
                let Some(d) = self.dialogs.get_mut(&call_id) else { return (None, None) };
                let Ok(invite) = Message::parse(&d.invite) else { return (None, None) };
                let headers = [
                    ("Contact", format!("<sip:{}@{}{}>", self.user, self.advertise, self.transport.uri_param())),
                    ("Content-Type", "application/sdp".to_owned()),
                ];
                let ok = message::response(&invite, 200, "OK", d.from, &d.tag, &headers, sdp.as_bytes());
                d.last = ok.clone();
                d.resend = Some((now + T1_MS, T1_MS, now + ANSWER_RETRANSMIT_MS));
                (Some(Out { bytes: ok, to: d.from }), None)
            }
            Event::Refuse { call_id, code, reason } => {
                let Some(d) = self.dialogs.remove(&call_id) else { return (None, None) };
                let Ok(invite) = Message::parse(&d.invite) else { return (None, None) };
                let bytes = message::response(&invite, code, &reason, d.from, &d.tag, &[], b"");
                (Some(Out { bytes, to: d.from }), None)
            }
            Event::Ended { call_id, why } => {
                let Some(d) = self.dialogs.remove(&call_id) else { return (None, None) };
                d.cancel.cancel();
                debug!(call_id = %call_id, why = %why, "BYE to the upper platform.");
                (None, self.bye(&call_id, &d))
            }
        }
    }

    /// When the next 200 goes again.
    pub fn next_due(&self) -> Option<Millis> {
        self.dialogs.values().filter_map(|d| d.resend.map(|(at, _, _)| at)).min()
    }

    /// The 200s due again (their ACK not come).
    pub fn due(&mut self, now: Millis) -> Vec<Out> {
        let mut out = Vec::new();
        for d in self.dialogs.values_mut() {
            let Some((at, interval, until)) = d.resend else { continue };
            if now >= until {
                d.resend = None; // the play task sends BYE when its ACK wait ends
            } else if now >= at {
                out.push(Out { bytes: d.last.clone(), to: d.from });
                let interval = (interval * 2).min(T2_MS);
                d.resend = Some((now + interval, interval, until));
            }
        }
        out
    }

    /// A BYE in the dialog, from vigil's side: From is the INVITE's To with vigil's tag.
    fn bye(&mut self, call_id: &str, d: &Dialog) -> Option<Bye> {
        let invite = Message::parse(&d.invite).ok()?;
        let their_from = invite.header("From")?;
        let our_to = invite.header("To")?;
        let target = invite
            .header("Contact")
            .and_then(|c| {
                let c = c.trim();
                let inner = c.strip_prefix('<').and_then(|r| r.split('>').next()).unwrap_or(c);
                (!inner.is_empty()).then(|| inner.to_owned())
            })
            .unwrap_or_else(|| format!("sip:{}@{}", message::uri_user(their_from).unwrap_or(""), d.from));
        self.cseq += 1;
        let branch = format!("z9hG4bK{}", uuid::Uuid::new_v4().simple());
        let text = format!(
            "BYE {target} SIP/2.0\r\nVia: SIP/2.0/{via} {adv};rport;branch={branch}\r\nFrom: {our_to};tag={tag}\r\nTo: {their_from}\r\n\
Call-ID: {call_id}\r\nCSeq: {cseq} BYE\r\nMax-Forwards: 70\r\nUser-Agent: vigil/{ver}\r\nContent-Length: 0\r\n\r\n",
            via = self.transport.via(),
            adv = self.advertise,
            tag = d.tag,
            cseq = self.cseq,
            ver = env!("CARGO_PKG_VERSION"),
        );
        Some(Bye { branch, bytes: text.into_bytes(), to: d.from })
    }
}
