//! HTTP Digest (RFC 2617, MD5, `qop=auth`) as GB/T 28181 REGISTER (over RFC 3261) and
//! GA/T 1400 `/VIID/System/Register` use it: challenges, nonces with expiry and replay
//! protection, and response verification. Lenient on input (quoted or unquoted `qop`/`nc`;
//! the digest is checked over the `uri` the client names, path or full URL). Pure: time comes
//! in as `now`. Checks the nonces it issues (WVP and Monibuca do not).

use std::collections::{HashMap, VecDeque};

use md5::{Digest, Md5};

use crate::clock::Millis;

/// How long a nonce may be used.
pub const NONCE_TTL_MS: Millis = 300_000;
/// Most outstanding nonces; past it the expired are purged, then the oldest.
const MAX_NONCES: usize = 200_000;

#[derive(Debug, Clone)]
struct NonceState {
    issued_at: Millis,
    last_nc: u32,
    used: bool,
    /// Who the nonce was issued to (a source address, a device id at an address): a response
    /// from anyone else is answered with a fresh challenge, never checked.
    bound: Option<Box<str>>,
}

/// The outcome of checking an Authorization header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// Our nonce, expired or unknown: challenge again with `stale=true` (no penalty).
    Stale,
    /// A replayed nonce count.
    Replay,
    /// The response does not match: wrong password or wrong id.
    Wrong,
    /// The header is not a Digest we can check.
    Malformed,
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

pub fn md5_hex(s: &str) -> String {
    hex(&Md5::digest(s.as_bytes()))
}

/// SHA-256 in hex: the name of a stored image, a privacy hash, a record's default dedup key.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex(&sha2::Sha256::digest(bytes))
}

/// The parameters of `Authorization: Digest k=v, k="v", ...`.
pub fn parse_authorization(value: &str) -> Option<HashMap<String, String>> {
    let rest = value.trim().strip_prefix("Digest").or_else(|| value.trim().strip_prefix("digest"))?;
    let mut out = HashMap::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let (k, after) = s.split_once('=')?;
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (v, rest) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (&q[..end], &q[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim(), &after[end..])
        };
        if out.len() > 16 {
            return None;
        }
        out.insert(k, v.to_owned());
        s = rest.trim_start().trim_start_matches(',').trim_start();
    }
    Some(out)
}

/// The expected response for the given parameters.
pub fn expected(
    username: &str,
    realm: &str,
    password: &str,
    method: &str,
    uri: &str,
    nonce: &str,
    qop: Option<(&str, &str, &str)>,
) -> String {
    let ha1 = md5_hex(&format!("{username}:{realm}:{password}"));
    let ha2 = md5_hex(&format!("{method}:{uri}"));
    match qop {
        Some((nc, cnonce, qop)) => md5_hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")),
        None => md5_hex(&format!("{ha1}:{nonce}:{ha2}")),
    }
}

/// The `Authorization` value a client sends to answer the challenge `www` (a
/// `WWW-Authenticate` value) as `user`: MD5, with `qop=auth` and nonce count `nc` when the
/// challenge offers it, the RFC 2069 form when it does not (upper platforms of both kinds
/// are in the field); `opaque` is returned as it came. `None` when the challenge names no
/// realm or nonce.
pub fn answer(www: &str, user: &str, password: &str, method: &str, uri: &str, nc: u32, cnonce: &str) -> Option<String> {
    let c = parse_authorization(www)?;
    let (realm, nonce) = (c.get("realm")?, c.get("nonce")?);
    let opaque = c.get("opaque").map(|o| format!(", opaque=\"{o}\"")).unwrap_or_default();
    let offers_auth = c.get("qop").is_some_and(|q| q.split(',').any(|q| q.trim() == "auth"));
    if !offers_auth {
        let resp = expected(user, realm, password, method, uri, nonce, None);
        return Some(format!(
            "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{resp}\", algorithm=MD5{opaque}"
        ));
    }
    let nc = format!("{nc:08x}");
    let resp = expected(user, realm, password, method, uri, nonce, Some((&nc, cnonce, "auth")));
    Some(format!(
        "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", response=\"{resp}\", qop=auth, nc={nc}, cnonce=\"{cnonce}\", algorithm=MD5{opaque}"
    ))
}

/// Nonces we issued, with their use, and the order they were issued in (so that evicting
/// the oldest under a flood of unauthenticated REGISTERs costs O(1), not a scan).
#[derive(Debug, Default)]
pub struct Nonces {
    issued: HashMap<String, NonceState>,
    order: VecDeque<String>,
}

impl Nonces {
    /// A fresh nonce (unpredictable: 74 random bits of a UUID v7 plus its time).
    pub fn issue(&mut self, now: Millis) -> String {
        self.issue_bound(now, None)
    }

    /// A fresh nonce usable only by `bound` (see `check_bound`).
    pub fn issue_bound(&mut self, now: Millis, bound: Option<&str>) -> String {
        // Drop expired nonces from the front, and the oldest ones while over the cap.
        while let Some(oldest) = self.order.front() {
            let expired = self.issued.get(oldest).is_none_or(|s| now - s.issued_at >= NONCE_TTL_MS);
            if !expired && self.order.len() < MAX_NONCES {
                break;
            }
            if let Some(k) = self.order.pop_front() {
                self.issued.remove(&k);
            }
        }
        let nonce = uuid::Uuid::now_v7().simple().to_string();
        self.issued
            .insert(nonce.clone(), NonceState { issued_at: now, last_nc: 0, used: false, bound: bound.map(Box::from) });
        self.order.push_back(nonce.clone());
        nonce
    }

    /// The `WWW-Authenticate` value for a challenge. Always `algorithm=MD5` (Dahua NVRs do
    /// not retry without it) and `qop="auth"`.
    pub fn challenge(&mut self, realm: &str, now: Millis, stale: bool) -> String {
        self.challenge_bound(realm, now, stale, None)
    }

    /// A challenge whose nonce only `bound` may answer.
    pub fn challenge_bound(&mut self, realm: &str, now: Millis, stale: bool, bound: Option<&str>) -> String {
        let nonce = self.issue_bound(now, bound);
        let stale = if stale { ", stale=true" } else { "" };
        format!("Digest realm=\"{realm}\", nonce=\"{nonce}\", algorithm=MD5, qop=\"auth\"{stale}")
    }

    /// Checks credentials for `method` against `password`. The realm the client echoes is
    /// used (devices configured with another realm still authenticate with the password).
    pub fn check(&mut self, now: Millis, params: &HashMap<String, String>, method: &str, password: &str) -> Verdict {
        self.check_bound(now, params, method, password, None)
    }

    /// As `check`, for a nonce issued to `bound`: a nonce issued to someone else (another
    /// address, another device) is `Stale` — the sender is challenged afresh, and a nonce
    /// seen on the wire cannot be used from elsewhere.
    pub fn check_bound(
        &mut self,
        now: Millis,
        params: &HashMap<String, String>,
        method: &str,
        password: &str,
        bound: Option<&str>,
    ) -> Verdict {
        let (Some(user), Some(realm), Some(nonce), Some(uri), Some(resp)) = (
            params.get("username"),
            params.get("realm"),
            params.get("nonce"),
            params.get("uri"),
            params.get("response"),
        ) else {
            return Verdict::Malformed;
        };
        if params.get("algorithm").is_some_and(|a| !a.eq_ignore_ascii_case("md5")) {
            return Verdict::Malformed;
        }
        let Some(state) = self.issued.get_mut(nonce.as_str()) else { return Verdict::Stale };
        if now - state.issued_at >= NONCE_TTL_MS {
            return Verdict::Stale; // removed from `issued` and `order` together by `issue`
        }
        if state.bound.is_some() && state.bound.as_deref() != bound {
            return Verdict::Stale;
        }
        let qop = match (params.get("qop"), params.get("nc"), params.get("cnonce")) {
            (Some(q), Some(nc), Some(cn)) if q.eq_ignore_ascii_case("auth") => {
                let Ok(n) = u32::from_str_radix(nc, 16) else { return Verdict::Malformed };
                Some((nc.as_str(), cn.as_str(), q.as_str(), n))
            }
            (Some(_), _, _) => return Verdict::Malformed,
            _ => None,
        };
        let want = expected(user, realm, password, method, uri, nonce, qop.map(|(nc, cn, q, _)| (nc, cn, q)));
        if !want.eq_ignore_ascii_case(resp) {
            return Verdict::Wrong;
        }
        match qop {
            Some((_, _, _, n)) if n <= state.last_nc => Verdict::Replay,
            Some((_, _, _, n)) => {
                state.last_nc = n;
                Verdict::Ok
            }
            None if state.used => Verdict::Replay,
            None => {
                state.used = true;
                Verdict::Ok
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TV3 of shared/reference/gb28181.md §3.10 (wvp-GB28181-pro issue 2059): the hashes
    /// a Hikvision NVR's REGISTER must produce.
    #[test]
    fn reference_vector_tv3() {
        assert_eq!(md5_hex("34020000001110000301:3100000000:336699"), "6f18ded4c5f6a62e648c48542723449c");
        assert_eq!(md5_hex("REGISTER:sip:31000000000121100010@3100000000"), "12e2a02808a83dbd1518d4e008c83ec1");
        let with_qop = expected(
            "34020000001110000301",
            "3100000000",
            "336699",
            "REGISTER",
            "sip:31000000000121100010@3100000000",
            "72ebe402c9b39b11ec648ff1c1c5a3f2",
            Some(("00000001", "67dd03c3", "auth")),
        );
        assert_eq!(with_qop, "9a61637436620c51e4b2abf82a53e6be");
        let rfc2069 = expected(
            "34020000001110000301",
            "3100000000",
            "336699",
            "REGISTER",
            "sip:31000000000121100010@3100000000",
            "72ebe402c9b39b11ec648ff1c1c5a3f2",
            None,
        );
        assert_eq!(rfc2069, "bf2834595d02001c5bc87dfe466c0d3a");
    }

    fn creds(nonce: &str, nc: &str, password: &str) -> HashMap<String, String> {
        let resp = expected(
            "dev",
            "4201040000",
            password,
            "REGISTER",
            "sip:gw@4201040000",
            nonce,
            Some((nc, "c0ffee", "auth")),
        );
        parse_authorization(&format!(
            "Digest username=\"dev\", realm=\"4201040000\", nonce=\"{nonce}\", uri=\"sip:gw@4201040000\", response=\"{resp}\", algorithm=MD5, qop=auth, nc={nc}, cnonce=\"c0ffee\""
        ))
        .expect("parses")
    }

    #[test]
    fn nonces_expire_replays_are_refused_and_wrong_passwords_fail() {
        let mut n = Nonces::default();
        let nonce = n.issue(0);
        assert_eq!(n.check(1_000, &creds(&nonce, "00000001", "12345678"), "REGISTER", "12345678"), Verdict::Ok);
        assert_eq!(n.check(2_000, &creds(&nonce, "00000001", "12345678"), "REGISTER", "12345678"), Verdict::Replay);
        assert_eq!(n.check(3_000, &creds(&nonce, "00000002", "12345678"), "REGISTER", "12345678"), Verdict::Ok);
        assert_eq!(n.check(4_000, &creds(&nonce, "00000003", "wrong"), "REGISTER", "12345678"), Verdict::Wrong);
        assert_eq!(
            n.check(NONCE_TTL_MS + 1, &creds(&nonce, "00000004", "12345678"), "REGISTER", "12345678"),
            Verdict::Stale
        );
        assert_eq!(n.check(0, &creds("forged", "00000001", "12345678"), "REGISTER", "12345678"), Verdict::Stale);
        let challenge = n.challenge("4201040000", 0, false);
        assert!(challenge.contains("algorithm=MD5") && challenge.contains("qop=\"auth\""), "{challenge}");
    }

    #[test]
    fn a_clients_answer_verifies_once() {
        let mut n = Nonces::default();
        let www = n.challenge("vigil", 0, false);
        let auth = answer(&www, "cam", "pw-1", "POST", "/VIID/Faces", 1, "c0ffee").expect("an answer");
        let params = parse_authorization(&auth).expect("parses");
        assert_eq!(n.check(1, &params, "POST", "pw-1"), Verdict::Ok);
        assert_eq!(n.check(2, &params, "POST", "pw-1"), Verdict::Replay);
        assert_eq!(answer("Basic realm=x", "cam", "pw", "POST", "/", 1, "c"), None);
    }

    #[test]
    fn a_bound_nonce_answers_only_for_its_owner() {
        let mut n = Nonces::default();
        let nonce = n.issue_bound(0, Some("dev@10.0.0.1"));
        let c = creds(&nonce, "00000001", "12345678");
        assert_eq!(n.check_bound(1, &c, "REGISTER", "12345678", Some("dev@10.0.0.2")), Verdict::Stale);
        assert_eq!(n.check_bound(1, &c, "REGISTER", "12345678", None), Verdict::Stale);
        assert_eq!(n.check_bound(1, &c, "REGISTER", "12345678", Some("dev@10.0.0.1")), Verdict::Ok);
    }

    #[test]
    fn outstanding_nonces_are_bounded() {
        let mut n = Nonces::default();
        for i in 0..(MAX_NONCES + 10) {
            n.issue(i as Millis / 1000);
        }
        assert_eq!((n.issued.len(), n.order.len()), (MAX_NONCES, MAX_NONCES));
        // Past the TTL everything old goes at the next issue.
        n.issue(NONCE_TTL_MS * 10);
        assert_eq!(n.issued.len(), 1);
    }

    proptest::proptest! {
        #[test]
        fn authorization_parsing_never_panics(s in "\\PC{0,200}") {
            let _ = parse_authorization(&s);
            let _ = parse_authorization(&format!("Digest {s}"));
        }
    }
}
