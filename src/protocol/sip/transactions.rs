//! Client transactions for the requests vigil sends (MESSAGE queries, SUBSCRIBE, the
//! `Response/Alarm`), by the RFC 3261 §17.1.2 non-INVITE rules: over UDP the request is
//! sent again after T1, 2·T1, … capped at T2 until a response arrives; over TCP it is sent
//! once; either way the transaction gives up after Timer F (64·T1). Matched to responses by
//! the Via branch. Pure: the server task sends what `due` returns and reads what `expired`
//! returns; a cap on transactions in flight keeps a storm of registrations from becoming a
//! storm of queries.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use crate::clock::Millis;

/// RFC 3261 timer values.
pub const T1_MS: Millis = 500;
pub const T2_MS: Millis = 4_000;
pub const TIMER_F_MS: Millis = 64 * T1_MS;

/// Most transactions in flight; further requests wait in the server's queue.
pub const MAX_IN_FLIGHT: usize = 4_096;

/// What a request was for, so its answer (or silence) can be acted on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// A MANSCDP `Query` (`Catalog`, `DeviceInfo`, `DeviceStatus`, `ConfigDownload`).
    Query(&'static str),
    /// `SUBSCRIBE` with `Event: Catalog`.
    SubscribeCatalog,
    /// The `Response/Alarm` (with the alarm's SN) after an alarm was stored.
    AlarmResponse(u64),
    /// `Control/DeviceControl` `IFameCmd` for a channel (a keyframe now).
    KeyframeRequest(String),
    /// `BYE` ending a media dialog.
    Bye,
    /// `CANCEL` of an INVITE still pending.
    Cancel,
}

impl Purpose {
    pub fn label(&self) -> &'static str {
        match self {
            Purpose::Query(cmd) => cmd,
            Purpose::SubscribeCatalog => "SubscribeCatalog",
            Purpose::AlarmResponse(_) => "AlarmResponse",
            Purpose::KeyframeRequest(_) => "IFameCmd",
            Purpose::Bye => "BYE",
            Purpose::Cancel => "CANCEL",
        }
    }
}

/// A request vigil is waiting on.
#[derive(Debug, Clone)]
pub struct Pending {
    pub device: String,
    pub purpose: Purpose,
    pub to: SocketAddr,
    pub bytes: Arc<Vec<u8>>,
    /// Sent over UDP (retransmitted) rather than TCP.
    pub udp: bool,
    pub started: Millis,
    interval: Millis,
    next_send: Millis,
}

/// The transactions in flight, by branch.
#[derive(Default)]
pub struct ClientTransactions {
    pending: HashMap<String, Pending>,
    /// Retransmission and expiry times, for `due` without a scan.
    timers: BTreeMap<(Millis, u64), String>,
    serial: u64,
}

impl ClientTransactions {
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    pub fn has_room(&self) -> bool {
        self.pending.len() < MAX_IN_FLIGHT
    }

    fn arm(&mut self, at: Millis, branch: &str) {
        self.serial += 1;
        self.timers.insert((at, self.serial), branch.to_owned());
    }

    /// Records a request just sent for the first time.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        &mut self,
        branch: String,
        device: String,
        purpose: Purpose,
        to: SocketAddr,
        bytes: Arc<Vec<u8>>,
        udp: bool,
        now: Millis,
    ) {
        let next_send = if udp { now + T1_MS } else { now + TIMER_F_MS };
        self.arm(next_send, &branch);
        self.pending
            .insert(branch, Pending { device, purpose, to, bytes, udp, started: now, interval: T1_MS, next_send });
    }

    /// A response arrived for `branch`: the transaction it ends, if any (provisional
    /// responses, 1xx, only stop retransmissions being needed so soon; we keep it simple and
    /// end the transaction on any final answer).
    pub fn answered(&mut self, branch: &str, code: u16) -> Option<Pending> {
        if code < 200 {
            if let Some(p) = self.pending.get_mut(branch) {
                // RFC 3261: after a provisional response, retransmit every T2.
                p.interval = T2_MS;
            }
            return None;
        }
        self.pending.remove(branch)
    }

    /// Walks the timers up to `now`: requests to send again go to `resend`, transactions
    /// past Timer F are returned.
    pub fn tick(&mut self, now: Millis, mut resend: impl FnMut(&Pending)) -> Vec<Pending> {
        let mut expired = Vec::new();
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((at, _), branch) = entry.remove_entry();
            let Some(p) = self.pending.get_mut(&branch) else { continue };
            if p.next_send != at {
                continue; // a stale timer
            }
            if now - p.started >= TIMER_F_MS {
                if let Some(p) = self.pending.remove(&branch) {
                    expired.push(p);
                }
                continue;
            }
            resend(p);
            p.interval = (p.interval * 2).min(T2_MS);
            p.next_send = (now + p.interval).min(p.started + TIMER_F_MS);
            let next = p.next_send;
            self.arm(next, &branch);
        }
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        "127.0.0.1:5060".parse().expect("an address")
    }

    #[test]
    fn udp_requests_are_resent_with_backoff_until_timer_f() {
        let mut t = ClientTransactions::default();
        t.start("b1".into(), "d".into(), Purpose::Query("Catalog"), addr(), Arc::new(vec![1]), true, 0);
        let mut sent_at = Vec::new();
        let mut expired = Vec::new();
        for now in (0..=40_000).step_by(100) {
            expired.extend(t.tick(now, |_| sent_at.push(now)));
        }
        // T1 doubling to T2: 500, 1500, 3500, 7500, 11500, ... until 32 s.
        assert_eq!(&sent_at[..4], &[500, 1500, 3500, 7500]);
        assert!(sent_at.windows(2).all(|w| w[1] - w[0] <= T2_MS));
        assert!(*sent_at.last().expect("resent") < TIMER_F_MS);
        assert_eq!(expired.len(), 1);
        assert!(t.is_empty());
    }

    #[test]
    fn an_answer_ends_the_transaction_and_tcp_is_not_resent() {
        let mut t = ClientTransactions::default();
        t.start("u".into(), "d".into(), Purpose::Query("DeviceInfo"), addr(), Arc::new(vec![]), true, 0);
        t.start("t".into(), "d".into(), Purpose::SubscribeCatalog, addr(), Arc::new(vec![]), false, 0);
        assert!(t.answered("u", 100).is_none());
        assert_eq!(t.answered("u", 200).map(|p| p.purpose), Some(Purpose::Query("DeviceInfo")));
        assert!(t.answered("u", 200).is_none(), "a retransmitted answer matches nothing");
        let mut resent = 0;
        let mut expired = Vec::new();
        for now in (0..=40_000).step_by(250) {
            expired.extend(t.tick(now, |_| resent += 1));
        }
        assert_eq!(resent, 0);
        assert_eq!(expired.iter().map(|p| p.purpose.clone()).collect::<Vec<_>>(), vec![Purpose::SubscribeCatalog]);
    }
}
