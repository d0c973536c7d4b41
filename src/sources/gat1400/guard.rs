//! Who may speak on the view-library port, decided from the headers before a body byte is
//! read. A registration binds a device id to the address it registered from (and to the
//! digest username); every later request for that id — Keepalive, UnRegister, objects — must
//! come from that address and, where `digest_every_request` is set (or the device's
//! `digest_every_request` attribute), carry a fresh digest. An address that fails digest
//! five times a minute is refused unheard. An upper view library's subscription requests must
//! come from its configured host with a digest of the upstream's password. Bodies are read
//! against a budget of bytes in flight, per address and in total.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::HeaderMap;

use crate::clock::Millis;
use crate::net::{FailureLimit, SharedHush};
use crate::protocol::digest::{parse_authorization, Nonces, Verdict as Digest};

/// Digest failures from one address within a minute before it is refused unheard (as SIP).
pub const MAX_FAILURES: u32 = 5;
pub const FAILURE_WINDOW_MS: Millis = 60_000;
/// Most bytes a system request (Register, Keepalive, UnRegister) may carry.
pub const SYSTEM_BODY_MAX: usize = 64 * 1024;
/// A body must arrive within this once its headers have.
pub const BODY_DEADLINE: Duration = Duration::from_secs(120);

/// One device's registration.
#[derive(Debug, Clone)]
pub struct Session {
    pub until: Millis,
    pub ip: IpAddr,
    pub username: String,
}

/// Why a request is refused before anything changed. Each is counted under its `reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The address failed too often: 403, unheard.
    Limited,
    /// No registration in force for the id: 401 with a challenge.
    NotRegistered,
    /// Registered from another address: 401 with a challenge (register again from here).
    WrongAddress { registered: IpAddr },
    /// A digest was needed and not given, or was stale: 401 with a challenge.
    NeedsDigest { stale: bool },
    /// A digest that does not verify: 401 with a challenge; counts towards the limit.
    WrongDigest,
}

impl Refusal {
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Limited => "too_many_failures",
            Refusal::NotRegistered => "not_registered",
            Refusal::WrongAddress { .. } => "not_from_registered_address",
            Refusal::NeedsDigest { .. } => "no_digest",
            Refusal::WrongDigest => "wrong_password",
        }
    }

    pub fn detail(&self) -> String {
        match self {
            Refusal::Limited => "too many failed attempts from this address; wait a minute".into(),
            Refusal::NotRegistered => "not registered: register first".into(),
            Refusal::WrongAddress { registered } => {
                format!("registered from {registered}, not from this address: register again from here")
            }
            Refusal::NeedsDigest { stale: false } => "this view library wants a digest on every request".into(),
            Refusal::NeedsDigest { stale: true } => "nonce expired".into(),
            Refusal::WrongDigest => "wrong username or password".into(),
        }
    }
}

/// The port's registrations, nonces and failure counts.
pub struct Gate {
    pub realm: String,
    digest_every_request: bool,
    nonces: Mutex<Nonces>,
    sessions: Mutex<HashMap<String, Session>>,
    failures: Mutex<FailureLimit>,
    /// One log line per interval for refused credentials, with the count held back.
    pub hush: SharedHush,
}

impl Gate {
    pub fn new(realm: String, digest_every_request: bool) -> Gate {
        Gate {
            realm,
            digest_every_request,
            nonces: Mutex::default(),
            sessions: Mutex::default(),
            failures: Mutex::new(FailureLimit::new(MAX_FAILURES, FAILURE_WINDOW_MS)),
            hush: SharedHush::new(10_000),
        }
    }

    /// A `WWW-Authenticate` value with a fresh nonce that only `ip` may answer.
    pub fn challenge(&self, now: Millis, stale: bool, ip: IpAddr) -> String {
        let bound = ip.to_string();
        self.nonces.lock().unwrap_or_else(|p| p.into_inner()).challenge_bound(&self.realm, now, stale, Some(&bound))
    }

    pub fn limited(&self, ip: IpAddr, now: Millis) -> bool {
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).limited(ip, now)
    }

    pub fn failed(&self, ip: IpAddr, now: Millis) {
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).failed(ip, now);
    }

    /// Checks an `Authorization` header for `method` against `password`; a failure counts
    /// towards the address's limit. `Ok(username)` when it verifies.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        method: &str,
        password: &str,
        ip: IpAddr,
        now: Millis,
    ) -> Result<String, Refusal> {
        let Some(params) = headers.get("authorization").and_then(|h| h.to_str().ok()).and_then(parse_authorization)
        else {
            return Err(Refusal::NeedsDigest { stale: false });
        };
        let bound = ip.to_string();
        let verdict = self.nonces.lock().unwrap_or_else(|p| p.into_inner()).check_bound(
            now,
            &params,
            method,
            password,
            Some(&bound),
        );
        match verdict {
            Digest::Ok => Ok(params.get("username").cloned().unwrap_or_default()),
            Digest::Stale => Err(Refusal::NeedsDigest { stale: true }),
            Digest::Replay | Digest::Wrong | Digest::Malformed => {
                self.failed(ip, now);
                Err(Refusal::WrongDigest)
            }
        }
    }

    /// Binds `id` to the address (and digest username) of a registration that verified.
    pub fn bind(&self, id: &str, session: Session) {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).insert(id.to_owned(), session);
    }

    /// Extends a registration in force.
    pub fn renew(&self, id: &str, until: Millis) {
        if let Some(s) = self.sessions.lock().unwrap_or_else(|p| p.into_inner()).get_mut(id) {
            s.until = until;
        }
    }

    /// Ends a registration; answers whether there was one.
    pub fn unbind(&self, id: &str) -> bool {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).remove(id).is_some()
    }

    /// Whether a request for `id` from `peer` with `headers` is the registered device's.
    /// `password` is the device's (for the digest where one is wanted); `digest_wanted` is
    /// the device's own setting.
    #[allow(clippy::too_many_arguments)]
    pub fn caller(
        &self,
        id: &str,
        peer: SocketAddr,
        headers: &HeaderMap,
        method: &str,
        password: &str,
        digest_wanted: bool,
        now: Millis,
    ) -> Result<(), Refusal> {
        if self.limited(peer.ip(), now) {
            return Err(Refusal::Limited);
        }
        let session = self.sessions.lock().unwrap_or_else(|p| p.into_inner()).get(id).cloned();
        let Some(session) = session.filter(|s| s.until > now) else { return Err(Refusal::NotRegistered) };
        if session.ip != peer.ip() {
            return Err(Refusal::WrongAddress { registered: session.ip });
        }
        if self.digest_every_request || digest_wanted {
            let username = self.verify(headers, method, password, peer.ip(), now)?;
            if username != session.username {
                self.failed(peer.ip(), now);
                return Err(Refusal::WrongDigest);
            }
        }
        Ok(())
    }
}

/// Bytes of request bodies being read or held, in total and per address.
pub struct Budget {
    total: usize,
    per_address: usize,
    held: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// A body's place in the budget, given back when dropped.
pub struct Held {
    budget: Arc<Budget>,
    ip: IpAddr,
    bytes: usize,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut held = self.budget.held.lock().unwrap_or_else(|p| p.into_inner());
        held.0 = held.0.saturating_sub(self.bytes);
        if let Some(n) = held.1.get_mut(&self.ip) {
            *n = n.saturating_sub(self.bytes);
            if *n == 0 {
                held.1.remove(&self.ip);
            }
        }
    }
}

impl Budget {
    /// Four bodies of the largest size in flight in total, two from one address.
    pub fn for_max_body(max_body: usize) -> Arc<Budget> {
        Arc::new(Budget {
            total: max_body.saturating_mul(4),
            per_address: max_body.saturating_mul(2),
            held: Mutex::default(),
        })
    }

    /// Room for `bytes` from `ip`, or `None` (the sender is told to try again later).
    pub fn take(self: &Arc<Self>, ip: IpAddr, bytes: usize) -> Option<Held> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let mine = held.1.get(&ip).copied().unwrap_or(0);
        if held.0.saturating_add(bytes) > self.total || mine.saturating_add(bytes) > self.per_address {
            return None;
        }
        held.0 += bytes;
        *held.1.entry(ip).or_insert(0) += bytes;
        Some(Held { budget: self.clone(), ip, bytes })
    }
}

/// Why a body could not be read.
#[derive(Debug)]
pub enum BodyError {
    /// Larger than the limit (declared or as it arrived).
    TooLarge { limit: usize },
    /// No room in the budget of bytes in flight.
    Busy,
    /// It did not arrive within `BODY_DEADLINE`.
    Slow,
    /// The connection failed mid-body.
    Broken(String),
}

/// Reads a body of at most `limit` bytes, holding its size in `budget` (the declared length,
/// or the limit when none is declared) until the returned `Held` is dropped.
pub async fn read(
    budget: &Arc<Budget>,
    ip: IpAddr,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<(Bytes, Held), BodyError> {
    let declared =
        headers.get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(BodyError::TooLarge { limit });
    }
    let held = budget.take(ip, declared.unwrap_or(limit)).ok_or(BodyError::Busy)?;
    match tokio::time::timeout(BODY_DEADLINE, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(BodyError::Slow),
        Ok(Ok(bytes)) => Ok((bytes, held)),
        Ok(Err(e)) => {
            let text = e.to_string();
            if text.contains("length limit") {
                Err(BodyError::TooLarge { limit })
            } else {
                Err(BodyError::Broken(text))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(last: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, last], 40_000))
    }

    #[test]
    fn a_registration_binds_the_address_and_nothing_else_may_use_it() {
        let gate = Gate::new("vigil".into(), false);
        let h = HeaderMap::new();
        assert_eq!(gate.caller("cam", peer(1), &h, "POST", "pw", false, 0), Err(Refusal::NotRegistered));
        gate.bind("cam", Session { until: 1_000, ip: peer(1).ip(), username: "cam".into() });
        assert_eq!(gate.caller("cam", peer(1), &h, "POST", "pw", false, 10), Ok(()));
        assert_eq!(
            gate.caller("cam", peer(2), &h, "POST", "pw", false, 10),
            Err(Refusal::WrongAddress { registered: peer(1).ip() })
        );
        assert_eq!(gate.caller("cam", peer(1), &h, "POST", "pw", true, 10), Err(Refusal::NeedsDigest { stale: false }));
        assert_eq!(gate.caller("cam", peer(1), &h, "POST", "pw", false, 1_000), Err(Refusal::NotRegistered), "expired");
    }

    #[test]
    fn wrong_digests_limit_the_address() {
        let gate = Gate::new("vigil".into(), true);
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            axum::http::HeaderValue::from_static(
                "Digest username=\"cam\", realm=\"vigil\", nonce=\"n\", uri=\"/VIID/Faces\", response=\"00\"",
            ),
        );
        gate.bind("cam", Session { until: 100_000, ip: peer(1).ip(), username: "cam".into() });
        // An unknown nonce is stale (no penalty); a known nonce with a wrong response is not.
        assert_eq!(gate.caller("cam", peer(1), &h, "POST", "pw", false, 10), Err(Refusal::NeedsDigest { stale: true }));
        let www = gate.challenge(10, false, peer(1).ip());
        let nonce = www.split("nonce=\"").nth(1).and_then(|s| s.split('"').next()).expect("nonce").to_owned();
        let bad = format!(
            "Digest username=\"cam\", realm=\"vigil\", nonce=\"{nonce}\", uri=\"/VIID/Faces\", response=\"00\""
        );
        h.insert("authorization", axum::http::HeaderValue::from_str(&bad).expect("header"));
        for _ in 0..MAX_FAILURES {
            assert_eq!(gate.caller("cam", peer(1), &h, "POST", "pw", false, 20), Err(Refusal::WrongDigest));
        }
        assert_eq!(gate.caller("cam", peer(1), &h, "POST", "pw", false, 30), Err(Refusal::Limited));
    }

    #[test]
    fn the_budget_bounds_bytes_per_address_and_in_total() {
        let b = Budget::for_max_body(100);
        let one = b.take(peer(1).ip(), 150).expect("room");
        assert!(b.take(peer(1).ip(), 60).is_none(), "over the address's 200");
        let _two = b.take(peer(2).ip(), 200).expect("room");
        assert!(b.take(peer(3).ip(), 60).is_none(), "over the total of 400");
        drop(one);
        assert!(b.take(peer(3).ip(), 60).is_some());
    }
}
