//! What vigil asks of devices: after a registration, DeviceInfo, ConfigDownload/BasicParam
//! (the keepalive settings), Catalog, DeviceStatus and a catalog SUBSCRIBE; DeviceStatus
//! (10 min) and Catalog (6 h) again on schedule and the subscription renewed at half its life; the `Response/Alarm`
//! after an alarm is stored. Requests wait in a backlog and leave at a bounded pace with a
//! bounded number in flight (a registration storm does not become a query storm), each as
//! a client transaction (retransmitted over UDP, Timer F), over the transport the device
//! registered on, in the device's charset, with its own SN counter.

use std::sync::Arc;

use tracing::{debug, info};

use super::{Server, BACKLOG_MAX, CATALOG_EVERY_MS, STATUS_EVERY_MS};
use crate::clock::{now_ms, Millis};
use crate::protocol::manscdp;
use crate::protocol::sip::message::Message;
use crate::protocol::sip::transactions::Purpose;

/// Most new requests sent per pump (every 100 ms): 5,000 a second.
const PER_PUMP: usize = 500;
/// The catalog subscription asked for, and renewed at half of.
const SUBSCRIPTION_S: i64 = 3600;

impl Server {
    /// Queues a request for a device; past `BACKLOG_MAX` it is dropped and counted.
    pub(super) fn enqueue(&mut self, device: String, purpose: Purpose) {
        if self.backlog.len() >= BACKLOG_MAX {
            self.metrics.sip_transactions.with_label_values(&[purpose.label(), "dropped"]).inc();
            return;
        }
        if self.queued.insert((device.clone(), purpose.clone())) {
            self.backlog.push_back((device, purpose));
        }
    }

    /// What vigil asks a device that has just registered (or moved).
    pub(super) fn ask_after_registration(&mut self, id: &str) {
        for p in [
            Purpose::Query("DeviceInfo"),
            Purpose::Query("ConfigDownload"),
            Purpose::Query("Catalog"),
            Purpose::Query("DeviceStatus"),
            Purpose::SubscribeCatalog,
        ] {
            self.enqueue(id.to_owned(), p);
        }
    }

    /// Once a second: DeviceStatus queries and subscription renewals that are due; sessions
    /// whose registration expired are closed (presence already made the device offline).
    pub(super) fn schedule(&mut self, now: Millis) {
        let mut due = Vec::new();
        let mut gone = Vec::new();
        for (id, s) in self.sessions.iter_mut() {
            if s.info.expires_at <= now {
                gone.push(id.clone());
                continue;
            }
            if now >= s.next_status_at {
                s.next_status_at = now + STATUS_EVERY_MS;
                due.push((id.clone(), Purpose::Query("DeviceStatus")));
            }
            if now >= s.next_catalog_at {
                s.next_catalog_at = now + CATALOG_EVERY_MS;
                due.push((id.clone(), Purpose::Query("Catalog")));
            }
            if s.renew_subscription_at.is_some_and(|at| now >= at) {
                s.renew_subscription_at = None;
                due.push((id.clone(), Purpose::SubscribeCatalog));
            }
        }
        for id in gone {
            self.sessions.remove(&id);
            self.board.remove(&id);
            self.board_dirty = true;
            debug!(device = %id, "Registration expired; session closed.");
        }
        for (id, p) in due {
            self.enqueue(id, p);
        }
    }

    /// Every 100 ms: retransmissions and timeouts of requests in flight, then new requests
    /// from the backlog while there is room.
    pub(super) async fn pump(&mut self) {
        self.flush_admissions();
        let now = now_ms();
        self.invite_timers(now).await;
        let mut resend: Vec<(std::net::SocketAddr, Arc<Vec<u8>>)> = Vec::new();
        let expired = self.transactions.tick(now, |p| resend.push((p.to, p.bytes.clone())));
        for (to, bytes) in resend {
            self.metrics.sip_messages.with_label_values(&["retransmission", "out"]).inc();
            if let Err(e) = self.udp.send_to(&bytes, to).await {
                debug!(peer = %to, error = %e, "Cannot resend a SIP request.");
            }
        }
        for p in expired {
            self.metrics.sip_transactions.with_label_values(&[p.purpose.label(), "timeout"]).inc();
            debug!(device = %p.device, request = p.purpose.label(), "Device did not answer a request (Timer F).");
        }
        let mut sent = 0;
        while sent < PER_PUMP && self.transactions.has_room() {
            let Some((device, purpose)) = self.backlog.pop_front() else { break };
            let key = (device, purpose);
            self.queued.remove(&key);
            let (device, purpose) = key;
            if self.send_request(&device, purpose, now).await {
                sent += 1;
            }
        }
    }

    /// Builds and sends one request; false when the device has no session any more.
    pub(super) async fn send_request(&mut self, device: &str, purpose: Purpose, now: Millis) -> bool {
        self.cseq = self.cseq.wrapping_add(1);
        let cseq = self.cseq;
        let realm = self.cfg.realm.clone();
        let listen = self.cfg.listen;
        let gw = self.gateway_id.clone();
        let tag = self.tag.clone();
        use crate::config::SipCharset;
        let forced = match self.cfg.charset {
            SipCharset::Utf8 => Some(manscdp::Charset::Utf8),
            // GB 18030 decodes and encodes every GB 2312 and GBK text.
            SipCharset::Gb2312 | SipCharset::Gbk | SipCharset::Gb18030 => Some(manscdp::Charset::Gb18030),
            SipCharset::Auto => None,
        };
        let Some(s) = self.sessions.get_mut(device) else { return false };
        let charset = forced.unwrap_or(s.charset());
        let sn = match &purpose {
            Purpose::AlarmResponse(sn) => *sn,
            _ => s.next_sn(),
        };
        let (method, body, extra) = match &purpose {
            Purpose::Query(cmd) => {
                s.remember_asked(sn, cmd, now);
                ("MESSAGE", manscdp::query(cmd, sn, device, charset), String::new())
            }
            Purpose::SubscribeCatalog => {
                s.remember_asked(sn, "Catalog", now);
                (
                    "SUBSCRIBE",
                    manscdp::query("Catalog", sn, device, charset),
                    format!("Event: Catalog;id={sn}\r\nExpires: {SUBSCRIPTION_S}\r\nContact: <sip:{gw}@{listen}>\r\n"),
                )
            }
            Purpose::AlarmResponse(_) => ("MESSAGE", manscdp::alarm_response(sn, device, charset), String::new()),
            Purpose::KeyframeRequest(channel) => {
                ("MESSAGE", manscdp::keyframe_request(sn, channel, charset), String::new())
            }
            // Sent by the dialog code (`invite.rs`), never from the backlog.
            Purpose::Bye | Purpose::Cancel => return false,
        };
        let to = s.info.source;
        let tcp = s.tcp.clone();
        let transport = if tcp.is_some() { "TCP" } else { "UDP" };
        let branch = format!("z9hG4bK{}", uuid::Uuid::now_v7().simple());
        let call = uuid::Uuid::now_v7().simple().to_string();
        let head = format!(
            "{method} sip:{device}@{to} SIP/2.0\r\nVia: SIP/2.0/{transport} {listen};rport;branch={branch}\r\n\
From: <sip:{gw}@{realm}>;tag={tag}\r\nTo: <sip:{device}@{realm}>\r\nCall-ID: {call}\r\nCSeq: {cseq} {method}\r\n\
{extra}Content-Type: Application/MANSCDP+xml\r\nMax-Forwards: 70\r\nUser-Agent: vigil/{ver}\r\nContent-Length: {len}\r\n\r\n",
            ver = env!("CARGO_PKG_VERSION"),
            len = body.len(),
        );
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&body);
        let bytes = Arc::new(bytes);
        self.metrics.sip_messages.with_label_values(&[method, "out"]).inc();
        match &tcp {
            Some(tx) => {
                let _ = tx.try_send(bytes.to_vec());
            }
            None => {
                if let Err(e) = self.udp.send_to(&bytes, to).await {
                    debug!(peer = %to, error = %e, "Cannot send a SIP request.");
                }
            }
        }
        debug!(device, sn, request = purpose.label(), "Request sent.");
        self.transactions.start(branch, device.to_owned(), purpose, to, bytes, tcp.is_none(), now);
        true
    }

    /// A response to a request vigil sent: ends its transaction; a SUBSCRIBE accepted sets
    /// the renewal.
    pub(super) fn response(&mut self, msg: &Message<'_>, code: u16, from: std::net::SocketAddr) {
        let Some(branch) = msg.branch() else { return };
        // A CANCEL shares its INVITE's branch; its transaction is kept under its own key.
        let key = if msg.cseq().is_some_and(|(_, m)| m.eq_ignore_ascii_case("CANCEL")) {
            format!("{branch}|CANCEL")
        } else {
            branch.to_owned()
        };
        let Some(p) = self.transactions.answered(&key, code) else { return };
        let outcome = if (200..300).contains(&code) { "ok" } else { "refused" };
        self.metrics.sip_transactions.with_label_values(&[p.purpose.label(), outcome]).inc();
        if p.purpose == Purpose::SubscribeCatalog {
            let now = now_ms();
            if let Some(s) = self.sessions.get_mut(&p.device) {
                if outcome == "ok" {
                    let granted = msg
                        .header("Expires")
                        .and_then(|v| v.trim().parse::<i64>().ok())
                        .filter(|v| *v > 0)
                        .unwrap_or(SUBSCRIPTION_S)
                        .min(SUBSCRIPTION_S);
                    s.renew_subscription_at = Some(now + granted * 500);
                    s.info.catalog_subscription_until = Some(now + granted * 1000);
                    info!(device = %p.device, expires_s = granted, "Catalog subscription accepted.");
                } else {
                    s.info.catalog_subscription_until = None;
                    debug!(device = %p.device, code, "Catalog subscription refused; the catalog is queried instead.");
                }
                self.board.put(&p.device, s.info.clone());
            }
        }
        if outcome == "refused" {
            debug!(device = %p.device, peer = %from, code, request = p.purpose.label(), "Device refused a request.");
        }
    }
}
