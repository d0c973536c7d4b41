//! The REGISTER decision, pure: from what a REGISTER carries (its device id, Authorization and
//! requested expiry), what the registry knows of the device and `now`, decide — refuse the id,
//! refuse an address that keeps failing, challenge, refuse the digest, hold for admission,
//! register for how long, or un-register. It owns the nonces (bound to device id and address)
//! and the per-address failure limit. No sockets, no database, no clock of its own: the SIP
//! server (`server/`) turns a `Decision` into the answer, the session and the presence
//! evidence.

use std::net::IpAddr;

use crate::clock::Millis;
use crate::ids::GbCode;
use crate::net::FailureLimit;
use crate::protocol::digest::{parse_authorization, Nonces, Verdict};
use crate::registry::{Admission, DeviceKind};

/// Digest failures from one address within the window before it is refused unheard.
const MAX_FAILURES: u32 = 5;
const FAILURE_WINDOW_MS: Millis = 60_000;
/// The shortest registration granted.
pub const MIN_EXPIRES_S: u64 = 60;

/// What the decision is configured with (`[gb28181]`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Require HTTP Digest.
    pub digest: bool,
    pub realm: String,
    /// The password of a device that has none of its own.
    pub password: String,
    /// The longest registration granted, seconds.
    pub expires_max_s: u64,
}

/// What a REGISTER carries that the decision reads.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The user part of `From`.
    pub from_user: Option<&'a str>,
    /// `Authorization` (or `Proxy-Authorization`).
    pub authorization: Option<&'a str>,
    /// `Expires`, or the Contact's `expires` parameter.
    pub expires: Option<u64>,
    /// Where it came from (nonces and failures are per address).
    pub ip: IpAddr,
}

/// What the registry knows of the device.
#[derive(Debug, Clone)]
pub struct Known {
    pub admission: Admission,
    pub password: Option<String>,
}

/// What to do with a REGISTER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// 400: no device id in `From`.
    NoDeviceId,
    /// 400: the id is not a 20-digit GB/T 28181 code (why).
    BadDeviceId(String),
    /// 403: the address failed digest too often this minute.
    RateLimited,
    /// 401 with this `WWW-Authenticate`; `outcome` is the metric label (`challenged`,
    /// `malformed`).
    Challenge { www_authenticate: String, outcome: &'static str },
    /// 403: the digest username is not the device id.
    WrongUsername,
    /// 403: a wrong password or a replayed nonce.
    WrongPassword,
    /// 403: awaiting an operator's approval.
    Quarantined,
    /// 403: an operator rejected it.
    Rejected,
    /// Authenticated and unknown to the registry: its admission is to be written, as the kind
    /// its code's type digits say (none where they name no kind).
    Unknown { kind: Option<DeviceKind> },
    /// 200: registered for `granted_s` seconds.
    Register { granted_s: u64 },
    /// 200 to `Expires: 0`.
    Unregister,
}

/// The REGISTER decision with its state: the nonces issued and the addresses failing.
pub struct Registrar {
    settings: Settings,
    nonces: Nonces,
    failures: FailureLimit,
}

impl Registrar {
    pub fn new(settings: Settings) -> Registrar {
        Registrar { settings, nonces: Nonces::default(), failures: FailureLimit::new(MAX_FAILURES, FAILURE_WINDOW_MS) }
    }

    /// The device id of a REGISTER, or the decision that refuses it.
    pub fn device_id(req: &Request<'_>) -> Result<(String, GbCode), Decision> {
        let id = req.from_user.ok_or(Decision::NoDeviceId)?;
        GbCode::parse(id).map(|c| (id.to_owned(), c)).map_err(|e| Decision::BadDeviceId(e.to_string()))
    }

    /// Decides a REGISTER from `id` (read by `device_id`), given what the registry knows of it.
    pub fn decide(
        &mut self,
        req: &Request<'_>,
        (id, code): (&str, &GbCode),
        known: Option<&Known>,
        now: Millis,
    ) -> Decision {
        if self.failures.limited(req.ip, now) {
            return Decision::RateLimited;
        }
        if self.settings.digest {
            let own = known.and_then(|k| k.password.as_deref());
            if let Some(refusal) = self.authenticate(req, id, own, now) {
                return refusal;
            }
        }
        match known {
            Some(k) => self.admitted(k.admission, req.expires),
            None => Decision::Unknown { kind: code.device_kind() },
        }
    }

    /// Decides for an authenticated device the registry knows (again after an unknown
    /// device's admission is written): its admission, then the registration asked for.
    pub fn admitted(&self, admission: Admission, expires: Option<u64>) -> Decision {
        match admission {
            Admission::Quarantined => return Decision::Quarantined,
            Admission::Rejected => return Decision::Rejected,
            Admission::Approved => {}
        }
        let max = self.settings.expires_max_s.max(MIN_EXPIRES_S);
        match expires.unwrap_or(self.settings.expires_max_s) {
            0 => Decision::Unregister,
            asked => Decision::Register { granted_s: asked.clamp(MIN_EXPIRES_S, max) },
        }
    }

    /// `Some(decision)` when the request must be challenged or refused.
    fn authenticate(&mut self, req: &Request<'_>, id: &str, own: Option<&str>, now: Millis) -> Option<Decision> {
        let Some(auth) = req.authorization else {
            return Some(self.challenge(id, req.ip, now, false, "challenged"));
        };
        let Some(params) = parse_authorization(auth) else {
            return Some(self.challenge(id, req.ip, now, false, "malformed"));
        };
        if params.get("username").is_some_and(|u| u != id) {
            self.failures.failed(req.ip, now);
            return Some(Decision::WrongUsername);
        }
        let password = own.unwrap_or(&self.settings.password);
        let bound = format!("{id}@{}", req.ip);
        match self.nonces.check_bound(now, &params, "REGISTER", password, Some(&bound)) {
            Verdict::Ok => None,
            Verdict::Stale | Verdict::Malformed => Some(self.challenge(id, req.ip, now, true, "challenged")),
            Verdict::Wrong | Verdict::Replay => {
                self.failures.failed(req.ip, now);
                Some(Decision::WrongPassword)
            }
        }
    }

    /// A fresh challenge, its nonce bound to the device id and the address.
    fn challenge(&mut self, id: &str, ip: IpAddr, now: Millis, stale: bool, outcome: &'static str) -> Decision {
        let bound = format!("{id}@{ip}");
        let www_authenticate = self.nonces.challenge_bound(&self.settings.realm, now, stale, Some(&bound));
        Decision::Challenge { www_authenticate, outcome }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::digest::answer;

    const ID: &str = "42010400001320000001";
    const T0: Millis = 1_000_000;

    fn registrar() -> Registrar {
        Registrar::new(Settings {
            digest: true,
            realm: "4201040000".into(),
            password: "12345678".into(),
            expires_max_s: 3600,
        })
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    fn request<'a>(auth: Option<&'a str>, expires: Option<u64>, from: IpAddr) -> Request<'a> {
        Request { from_user: Some(ID), authorization: auth, expires, ip: from }
    }

    fn decide(r: &mut Registrar, req: &Request<'_>, known: Option<&Known>, now: Millis) -> Decision {
        let (id, code) = Registrar::device_id(req).expect("a GB code");
        r.decide(req, (&id, &code), known, now)
    }

    /// The Authorization a device computes for a challenge.
    fn respond(challenge: &Decision, password: &str) -> String {
        let Decision::Challenge { www_authenticate, .. } = challenge else { panic!("a challenge: {challenge:?}") };
        answer(www_authenticate, ID, password, "REGISTER", &format!("sip:{ID}@4201040000"), 1, "0a4f113b")
            .expect("an answer")
    }

    fn approved(password: Option<&str>) -> Known {
        Known { admission: Admission::Approved, password: password.map(str::to_owned) }
    }

    #[test]
    fn a_device_is_challenged_then_registered_for_what_it_asked_within_bounds() {
        let mut r = registrar();
        let known = approved(None);
        let first = decide(&mut r, &request(None, Some(600), ip(1)), Some(&known), T0);
        assert!(matches!(first, Decision::Challenge { outcome: "challenged", .. }), "{first:?}");
        let auth = respond(&first, "12345678");
        let req = request(Some(&auth), Some(600), ip(1));
        assert_eq!(decide(&mut r, &req, Some(&known), T0 + 10), Decision::Register { granted_s: 600 });
        // Bounds: at least 60 s, at most the configured maximum; none asked is the maximum.
        for (asked, granted) in [(Some(5), 60), (Some(86_400), 3600), (None, 3600)] {
            assert_eq!(r.admitted(Admission::Approved, asked), Decision::Register { granted_s: granted }, "{asked:?}");
        }
        assert_eq!(r.admitted(Admission::Approved, Some(0)), Decision::Unregister);
    }

    #[test]
    fn a_device_with_its_own_password_is_held_to_it_and_not_to_the_default() {
        let mut r = registrar();
        let known = approved(Some("own-secret"));
        let c = decide(&mut r, &request(None, None, ip(1)), Some(&known), T0);
        let with_default = respond(&c, "12345678");
        assert_eq!(
            decide(&mut r, &request(Some(&with_default), None, ip(1)), Some(&known), T0),
            Decision::WrongPassword
        );
        let c = decide(&mut r, &request(None, None, ip(1)), Some(&known), T0);
        let own = respond(&c, "own-secret");
        assert_eq!(
            decide(&mut r, &request(Some(&own), None, ip(1)), Some(&known), T0),
            Decision::Register { granted_s: 3600 }
        );
    }

    #[test]
    fn a_nonce_is_good_only_from_its_address_and_once_and_five_failures_silence_an_address() {
        let mut r = registrar();
        let known = approved(None);
        let c = decide(&mut r, &request(None, None, ip(1)), Some(&known), T0);
        let auth = respond(&c, "12345678");
        // The same answer from another address is not honoured there: that address is
        // challenged afresh (the nonce is bound to the first), and the nonce stays good.
        let elsewhere = decide(&mut r, &request(Some(&auth), None, ip(2)), Some(&known), T0);
        assert!(
            matches!(&elsewhere, Decision::Challenge { www_authenticate, .. } if www_authenticate.contains("stale=true"))
        );
        assert_eq!(
            decide(&mut r, &request(Some(&auth), None, ip(1)), Some(&known), T0),
            Decision::Register { granted_s: 3600 }
        );
        // Replayed: refused.
        assert_eq!(decide(&mut r, &request(Some(&auth), None, ip(1)), Some(&known), T0), Decision::WrongPassword);
        // Wrong passwords from ip 3 until it is refused unheard, for the window only.
        for _ in 0..MAX_FAILURES {
            let c = decide(&mut r, &request(None, None, ip(3)), Some(&known), T0);
            let wrong = respond(&c, "guess");
            assert_eq!(decide(&mut r, &request(Some(&wrong), None, ip(3)), Some(&known), T0), Decision::WrongPassword);
        }
        assert_eq!(decide(&mut r, &request(None, None, ip(3)), Some(&known), T0 + 1), Decision::RateLimited);
        assert!(matches!(
            decide(&mut r, &request(None, None, ip(4)), Some(&known), T0 + 1),
            Decision::Challenge { .. }
        ));
        let later = T0 + FAILURE_WINDOW_MS + 1;
        assert!(matches!(decide(&mut r, &request(None, None, ip(3)), Some(&known), later), Decision::Challenge { .. }));
    }

    #[test]
    fn ids_usernames_admissions_and_unknown_devices_are_decided_before_any_session() {
        let mut r = registrar();
        let none = Request { from_user: None, authorization: None, expires: None, ip: ip(1) };
        assert_eq!(Registrar::device_id(&none).err(), Some(Decision::NoDeviceId));
        let short = Request { from_user: Some("1234"), ..none };
        assert!(matches!(Registrar::device_id(&short), Err(Decision::BadDeviceId(_))));
        let known = approved(None);
        let c = decide(&mut r, &request(None, None, ip(1)), Some(&known), T0);
        let Decision::Challenge { www_authenticate, .. } = &c else { panic!("challenge") };
        let other_user =
            answer(www_authenticate, "42010400001320000002", "12345678", "REGISTER", "sip:x@4201040000", 1, "0a4f113b")
                .expect("answer");
        assert_eq!(decide(&mut r, &request(Some(&other_user), None, ip(1)), Some(&known), T0), Decision::WrongUsername);
        let garbled = request(Some("Digest nonsense"), None, ip(1));
        assert!(matches!(decide(&mut r, &garbled, Some(&known), T0), Decision::Challenge { .. }));
        // Past the digest: admission decides.
        for (admission, want) in
            [(Admission::Quarantined, Decision::Quarantined), (Admission::Rejected, Decision::Rejected)]
        {
            let k = Known { admission, password: None };
            let c = decide(&mut r, &request(None, None, ip(5)), Some(&k), T0);
            let auth = respond(&c, "12345678");
            assert_eq!(decide(&mut r, &request(Some(&auth), None, ip(5)), Some(&k), T0), want);
        }
        let c = decide(&mut r, &request(None, None, ip(6)), None, T0);
        let auth = respond(&c, "12345678");
        assert_eq!(
            decide(&mut r, &request(Some(&auth), None, ip(6)), None, T0),
            Decision::Unknown { kind: Some(DeviceKind::Camera) },
            "a 132 code is a camera, its admission still to be written"
        );
        // Without digest (benchmarks, isolated networks) a known device registers at once.
        let mut open = Registrar::new(Settings { digest: false, ..registrar().settings });
        assert_eq!(
            decide(&mut open, &request(None, Some(120), ip(7)), Some(&known), T0),
            Decision::Register { granted_s: 120 }
        );
    }
}
