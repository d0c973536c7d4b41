//! Media dialogs vigil opens toward its devices (live video, `s=Play`): the INVITE client
//! transaction (RFC 3261 §17.1.1: over UDP resent at T1, 2·T1, … until a provisional or final
//! answer; given up after Timer B, 64·T1), the ACK (a new transaction for 2xx, the INVITE's
//! branch for a refusal), BYE both ways, CANCEL of an INVITE the player no longer wants (and
//! ACK + BYE for a 200 that arrives after it), 488 to a device's re-INVITE, and a keyframe
//! request (`IFameCmd`) once a play is answered. Requests go to
//! the address and transport the device registered with (NAT-safe, as for queries). A channel
//! under an NVR or lower platform is addressed by its own id in the Request-URI and To.

use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::Server;
use crate::clock::{now_ms, Millis};
use crate::protocol::sip::message::{self, param, Message};
use crate::protocol::sip::transactions::{Purpose, T1_MS, TIMER_F_MS};
use crate::sources::gb28181::dialog::{Command, DialogEvent};

/// Timer B: an INVITE with no final answer is given up after 64·T1.
const TIMER_B_MS: Millis = TIMER_F_MS;
/// Most media dialogs at once (pending and confirmed).
pub(super) const DIALOGS_MAX: usize = 4_096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// INVITE sent, nothing heard.
    Calling,
    /// A provisional answer came: no more retransmissions.
    Proceeding,
    /// 200 answered and ACKed.
    Confirmed,
    /// The player hung up before the final answer: CANCEL sent.
    Cancelled,
}

/// One media dialog.
pub(super) struct Dialog {
    device: String,
    channel: String,
    events: mpsc::Sender<DialogEvent>,
    to: std::net::SocketAddr,
    tcp: Option<mpsc::Sender<Vec<u8>>>,
    branch: String,
    invite: Arc<Vec<u8>>,
    tag: String,
    cseq: u32,
    state: State,
    /// The To header of the final answer (with the device's tag): for ACK and BYE.
    remote_to: Option<String>,
    started: Millis,
    interval: Millis,
    next_resend: Millis,
}

impl Server {
    /// A command from a player.
    pub(super) async fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Invite { call_id, device, channel, sdp, ssrc, events } => {
                self.invite(call_id, device, channel, sdp, ssrc, events).await
            }
            Command::Hangup { call_id } => self.hangup(&call_id).await,
        }
    }

    async fn invite(
        &mut self,
        call_id: String,
        device: String,
        channel: String,
        sdp: String,
        ssrc: String,
        events: mpsc::Sender<DialogEvent>,
    ) {
        let Some(s) = self.sessions.get(&device) else {
            let _ = events.try_send(DialogEvent::NotRegistered);
            return;
        };
        if self.dialogs.len() >= DIALOGS_MAX {
            warn!(device = %device, channel = %channel, dialogs = self.dialogs.len(), "Too many media dialogs at once; INVITE not sent.");
            let _ = events.try_send(DialogEvent::Refused { code: 503, reason: "vigil: too many media dialogs".into() });
            return;
        }
        let (to, tcp) = (s.info.source, s.tcp.clone());
        let transport = if tcp.is_some() { "TCP" } else { "UDP" };
        let (listen, gw, realm) = (self.cfg.listen, self.gateway_id.clone(), self.cfg.realm.clone());
        self.cseq = self.cseq.wrapping_add(1);
        let cseq = self.cseq;
        let branch = format!("z9hG4bK{}", uuid::Uuid::now_v7().simple());
        let tag = uuid::Uuid::now_v7().simple().to_string()[16..].to_owned();
        let head = format!(
            "INVITE sip:{channel}@{to} SIP/2.0\r\nVia: SIP/2.0/{transport} {listen};rport;branch={branch}\r\n\
From: <sip:{gw}@{realm}>;tag={tag}\r\nTo: <sip:{channel}@{realm}>\r\nCall-ID: {call_id}\r\nCSeq: {cseq} INVITE\r\n\
Contact: <sip:{gw}@{listen}>\r\nSubject: {channel}:{ssrc},{gw}:0\r\nContent-Type: APPLICATION/SDP\r\n\
Max-Forwards: 70\r\nUser-Agent: vigil/{ver}\r\nContent-Length: {len}\r\n\r\n{sdp}",
            ver = env!("CARGO_PKG_VERSION"),
            len = sdp.len(),
        );
        let invite = Arc::new(head.into_bytes());
        self.metrics.sip_messages.with_label_values(&["INVITE", "out"]).inc();
        self.send_to_device(to, &tcp, &invite).await;
        let now = now_ms();
        debug!(device = %device, channel = %channel, call_id = %call_id, "INVITE sent.");
        self.dialogs.insert(
            call_id,
            Dialog {
                device,
                channel,
                events,
                to,
                tcp,
                branch,
                invite,
                tag,
                cseq,
                state: State::Calling,
                remote_to: None,
                started: now,
                interval: T1_MS,
                next_resend: now + T1_MS,
            },
        );
    }

    async fn send_to_device(&self, to: std::net::SocketAddr, tcp: &Option<mpsc::Sender<Vec<u8>>>, bytes: &[u8]) {
        match tcp {
            Some(tx) => {
                let _ = tx.try_send(bytes.to_vec());
            }
            None => {
                if let Err(e) = self.udp.send_to(bytes, to).await {
                    debug!(peer = %to, error = %e, "Cannot send a SIP request.");
                }
            }
        }
    }

    /// A request within a dialog (ACK, BYE, CANCEL) with a fresh branch unless `branch`.
    fn in_dialog(&self, d: &Dialog, call_id: &str, method: &str, cseq: u32, branch: Option<&str>) -> (String, Vec<u8>) {
        let transport = if d.tcp.is_some() { "TCP" } else { "UDP" };
        let (listen, gw, realm) = (self.cfg.listen, &self.gateway_id, &self.cfg.realm);
        let branch = branch.map(str::to_owned).unwrap_or_else(|| format!("z9hG4bK{}", uuid::Uuid::now_v7().simple()));
        let to = d.remote_to.clone().unwrap_or_else(|| format!("<sip:{}@{realm}>", d.channel));
        let text = format!(
            "{method} sip:{channel}@{addr} SIP/2.0\r\nVia: SIP/2.0/{transport} {listen};rport;branch={branch}\r\n\
From: <sip:{gw}@{realm}>;tag={tag}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n\
Max-Forwards: 70\r\nUser-Agent: vigil/{ver}\r\nContent-Length: 0\r\n\r\n",
            channel = d.channel,
            addr = d.to,
            tag = d.tag,
            ver = env!("CARGO_PKG_VERSION"),
        );
        (branch, text.into_bytes())
    }

    /// Sends BYE (as a transaction, retransmitted over UDP) and forgets the dialog.
    async fn bye(&mut self, call_id: &str, d: &Dialog) {
        let (branch, bytes) = self.in_dialog(d, call_id, "BYE", d.cseq.wrapping_add(1), None);
        let bytes = Arc::new(bytes);
        self.metrics.sip_messages.with_label_values(&["BYE", "out"]).inc();
        self.send_to_device(d.to, &d.tcp, &bytes).await;
        self.transactions.start(branch, d.device.clone(), Purpose::Bye, d.to, bytes, d.tcp.is_none(), now_ms());
    }

    async fn ack(&mut self, call_id: &str, d: &Dialog, branch: Option<&str>) {
        let (_, bytes) = self.in_dialog(d, call_id, "ACK", d.cseq, branch);
        self.metrics.sip_messages.with_label_values(&["ACK", "out"]).inc();
        self.send_to_device(d.to, &d.tcp, &bytes).await;
    }

    async fn hangup(&mut self, call_id: &str) {
        let Some(mut d) = self.dialogs.remove(call_id) else { return };
        match d.state {
            State::Confirmed => self.bye(call_id, &d).await,
            State::Calling | State::Proceeding => {
                // CANCEL has the INVITE's branch and CSeq number; the dialog stays until the
                // final answer (487, or a 200 to ACK and BYE).
                let (branch, bytes) = self.in_dialog(&d, call_id, "CANCEL", d.cseq, Some(&d.branch.clone()));
                let bytes = Arc::new(bytes);
                self.metrics.sip_messages.with_label_values(&["CANCEL", "out"]).inc();
                self.send_to_device(d.to, &d.tcp, &bytes).await;
                // Its own transaction key: CANCEL shares the INVITE's branch.
                self.transactions.start(
                    format!("{branch}|CANCEL"),
                    d.device.clone(),
                    Purpose::Cancel,
                    d.to,
                    bytes,
                    d.tcp.is_none(),
                    now_ms(),
                );
                d.state = State::Cancelled;
                self.dialogs.insert(call_id.to_owned(), d);
            }
            State::Cancelled => {
                self.dialogs.insert(call_id.to_owned(), d);
            }
        }
    }

    /// A response whose CSeq method is INVITE.
    pub(super) async fn invite_response(&mut self, msg: &Message<'_>, code: u16, from: std::net::SocketAddr) {
        let Some(call_id) = msg.header("Call-ID").map(str::to_owned) else { return };
        // Only the device the INVITE went to answers it: an answer from another host (its SDP
        // would say where vigil takes media from) is refused and kept for the operator.
        if self.dialogs.get(&call_id).is_some_and(|d| d.to.ip() != from.ip()) {
            self.reject(
                "not_from_registered_address",
                from,
                format!("INVITE answer {code} for {call_id} from another host"),
            );
            return;
        }
        let Some(mut d) = self.dialogs.remove(&call_id) else {
            // A 200 retransmitted after the dialog ended, or for an INVITE given up: nothing
            // to do but let the device stop (it resends 200 until ACKed).
            return;
        };
        if code < 200 {
            if d.state == State::Calling {
                d.state = State::Proceeding;
                let _ = d.events.try_send(DialogEvent::Provisional(code));
            }
            self.dialogs.insert(call_id, d);
            return;
        }
        d.remote_to = msg.header("To").map(str::to_owned);
        let ok = (200..300).contains(&code);
        let outcome = if ok { "ok" } else { "refused" };
        self.metrics.sip_transactions.with_label_values(&["INVITE", outcome]).inc();
        if !ok {
            self.ack(&call_id, &d, Some(&d.branch.clone())).await;
            if d.state != State::Cancelled {
                let mut reason = match &msg.start {
                    message::StartLine::Response { reason, .. } => reason.to_string(),
                    _ => String::new(),
                };
                if let Some(w) = msg.header("Warning") {
                    reason =
                        format!("{reason} ({})", w.chars().filter(|c| !c.is_control()).take(120).collect::<String>());
                }
                info!(device = %d.device, channel = %d.channel, code, reason = %reason, "The device refused the INVITE.");
                let _ = d.events.try_send(DialogEvent::Refused { code, reason });
            }
            return;
        }
        if d.state == State::Confirmed {
            // The 200 again (our ACK was lost): ACK again.
            self.ack(&call_id, &d, None).await;
            self.dialogs.insert(call_id, d);
            return;
        }
        self.ack(&call_id, &d, None).await;
        if d.state == State::Cancelled {
            // Answered before the CANCEL reached it: the call exists, so end it.
            self.bye(&call_id, &d).await;
            return;
        }
        d.state = State::Confirmed;
        // A keyframe now (IFameCmd), as WVP does when a play starts: the first picture need
        // not wait for the encoder's next GOP. Devices that ignore it cost one MESSAGE.
        let (device, channel) = (d.device.clone(), d.channel.clone());
        self.send_request(&device, Purpose::KeyframeRequest(channel), now_ms()).await;
        let sdp = String::from_utf8_lossy(msg.body).into_owned();
        if d.events.try_send(DialogEvent::Answered { sdp }).is_err() {
            self.bye(&call_id, &d).await;
            return;
        }
        self.dialogs.insert(call_id, d);
    }

    /// A BYE from a device: 200, and the player is told; 481 for a dialog vigil does not know.
    pub(super) fn bye_from_device(&mut self, msg: &Message<'_>, from: std::net::SocketAddr) -> Vec<u8> {
        let call_id = msg.header("Call-ID").unwrap_or("");
        let ours =
            self.dialogs.get(call_id).is_some_and(|d| msg.header("To").and_then(|t| param(t, "tag")) == Some(&d.tag));
        if !ours {
            return message::response(msg, 481, "Call/Transaction Does Not Exist", from, &self.tag, &[], b"");
        }
        if let Some(d) = self.dialogs.remove(call_id) {
            info!(device = %d.device, channel = %d.channel, "The device ended the media dialog (BYE).");
            let _ = d.events.try_send(DialogEvent::ByeFromDevice);
        }
        message::response(msg, 200, "OK", from, &self.tag, &[], b"")
    }

    /// An INVITE from a device: vigil opens media dialogs, it does not take them (488 within
    /// one of ours, 405 otherwise).
    pub(super) fn invite_from_device(&self, msg: &Message<'_>, from: std::net::SocketAddr) -> Vec<u8> {
        let ours = msg.header("Call-ID").is_some_and(|c| self.dialogs.contains_key(c));
        if ours {
            message::response(msg, 488, "Not Acceptable Here (re-INVITE is not supported)", from, &self.tag, &[], b"")
        } else {
            message::response(msg, 405, "Method Not Allowed", from, &self.tag, &[("Allow", super::ALLOW.into())], b"")
        }
    }

    /// Every pump: INVITE retransmissions over UDP, Timer B, and dialogs whose player is gone.
    pub(super) async fn invite_timers(&mut self, now: Millis) {
        let mut resend = Vec::new();
        let mut expired = Vec::new();
        let mut orphaned = Vec::new();
        for (call_id, d) in self.dialogs.iter_mut() {
            match d.state {
                State::Confirmed => {
                    if d.events.is_closed() {
                        orphaned.push(call_id.clone());
                    }
                    continue;
                }
                _ if now - d.started >= TIMER_B_MS => expired.push(call_id.clone()),
                State::Calling if d.tcp.is_none() && now >= d.next_resend => {
                    d.interval *= 2;
                    d.next_resend = now + d.interval;
                    resend.push((d.to, d.invite.clone()));
                }
                _ => {}
            }
        }
        for (to, bytes) in resend {
            self.metrics.sip_messages.with_label_values(&["retransmission", "out"]).inc();
            if let Err(e) = self.udp.send_to(&bytes, to).await {
                debug!(peer = %to, error = %e, "Cannot resend an INVITE.");
            }
        }
        for call_id in expired {
            if let Some(d) = self.dialogs.remove(&call_id) {
                self.metrics.sip_transactions.with_label_values(&["INVITE", "timeout"]).inc();
                if d.state != State::Cancelled {
                    info!(device = %d.device, channel = %d.channel, "The device did not answer the INVITE (Timer B).");
                    let _ = d.events.try_send(DialogEvent::NoAnswer);
                }
            }
        }
        for call_id in orphaned {
            if let Some(d) = self.dialogs.remove(&call_id) {
                self.bye(&call_id, &d).await;
            }
        }
    }
}
