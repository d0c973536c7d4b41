//! vigil's registration to one upper platform (GB/T 28181 cascade, vigil the lower platform)
//! as a pure state machine, with the requests it sends: REGISTER (a 401/407 answered with
//! digest on the same Call-ID, CSeq + 1), refreshed at half of what the upper grants; a
//! `Notify/Keepalive` MESSAGE every keepalive interval once registered. A refusal, a REGISTER
//! unanswered (Timer F), `misses` keepalives unanswered in a row or a registration that ran
//! out start again on a new Call-ID after a backoff (2 s doubling to 15 s, with ±20 % jitter so
//! a district's gateways do not come back at one instant; capped low so that after a network
//! cut of any length the upper is registered to again, and brought back to the true state,
//! within 30 s of the network's return — an unanswered REGISTER costs the upper nothing). The task (`mod.rs`) sends what `due`
//! returns, retransmits, and reports answers and timeouts; time comes in as an argument.

use std::net::SocketAddr;
use std::time::Duration;

use crate::clock::Millis;
use crate::protocol::digest;
use crate::protocol::manscdp::{self, Charset};

const BACKOFF_MIN_MS: Millis = 2_000;
const BACKOFF_MAX_MS: Millis = 15_000;

/// What one upstream is, as the registration needs it.
#[derive(Debug, Clone)]
pub struct Settings {
    pub name: String,
    pub transport: super::link::Transport,
    /// The upper platform's id and SIP domain.
    pub server_id: String,
    pub domain: String,
    pub server_addr: SocketAddr,
    /// vigil's platform id as the upper knows it, and its domain (its first 10 digits).
    pub user_id: String,
    pub password: String,
    pub expires: Duration,
    pub keepalive: Duration,
    pub misses: u32,
}

impl Settings {
    fn own_domain(&self) -> &str {
        self.user_id.get(..10).unwrap_or(&self.user_id)
    }
}

/// Where the registration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Registering,
    Registered,
    Failing,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Registering => "registering",
            Phase::Registered => "registered",
            Phase::Failing => "failing",
        }
    }
}

/// Which request an answer or a timeout is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Register,
    Keepalive,
    /// A MESSAGE answering the upper's query (a catalog batch, DeviceInfo, DeviceStatus).
    Response,
    /// A BYE ending a play from vigil's side.
    Bye,
}

/// A request to send.
#[derive(Debug, Clone)]
pub struct Request {
    pub kind: Kind,
    pub branch: String,
    pub bytes: Vec<u8>,
}

/// What the API and the dashboard show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    pub phase: Phase,
    pub registered_until: Option<Millis>,
    pub last_keepalive_at: Option<Millis>,
    pub next_attempt_at: Option<Millis>,
    pub last_error: Option<String>,
    pub failures: u32,
}

pub struct Registration {
    s: Settings,
    /// Via/Contact: where the upper reaches vigil.
    advertise: String,
    tag: String,
    call_id: String,
    cseq: u32,
    /// CSeq of MESSAGEs (each on its own Call-ID).
    msg_cseq: u32,
    sn: u64,
    phase: Phase,
    next_register: Option<Millis>,
    register_in_flight: bool,
    /// The challenge to answer on the next REGISTER, and whether the last one carried it.
    challenge: Option<String>,
    answered_challenge: bool,
    nc: u32,
    registered_until: Option<Millis>,
    next_keepalive: Option<Millis>,
    keepalive_in_flight: bool,
    misses: u32,
    failures: u32,
    last_error: Option<String>,
    last_keepalive_at: Option<Millis>,
}

fn token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

impl Registration {
    /// A registration that sends its first REGISTER at `now`.
    pub fn new(s: Settings, advertise: String, now: Millis) -> Self {
        Registration {
            s,
            advertise,
            tag: token()[..10].to_owned(),
            call_id: token(),
            cseq: 0,
            msg_cseq: 0,
            sn: 0,
            phase: Phase::Registering,
            next_register: Some(now),
            register_in_flight: false,
            challenge: None,
            answered_challenge: false,
            nc: 0,
            registered_until: None,
            next_keepalive: None,
            keepalive_in_flight: false,
            misses: 0,
            failures: 0,
            last_error: None,
            last_keepalive_at: None,
        }
    }

    pub fn view(&self) -> View {
        View {
            phase: self.phase,
            registered_until: self.registered_until,
            last_keepalive_at: self.last_keepalive_at,
            next_attempt_at: if self.phase == Phase::Failing { self.next_register } else { None },
            last_error: self.last_error.clone(),
            failures: self.failures,
        }
    }

    /// The earliest time something is due (for the task's timer).
    pub fn next_due(&self) -> Option<Millis> {
        let r = self.next_register.filter(|_| !self.register_in_flight);
        let k = self.next_keepalive.filter(|_| !self.keepalive_in_flight && self.phase == Phase::Registered);
        let x = self.registered_until.filter(|_| self.phase == Phase::Registered);
        [r, k, x].into_iter().flatten().min()
    }

    /// The requests due at `now`.
    pub fn due(&mut self, now: Millis) -> Vec<Request> {
        let mut out = Vec::new();
        if self.phase == Phase::Registered && self.registered_until.is_some_and(|u| now >= u) {
            self.fail("the registration ran out before a refresh was answered".into(), now);
        }
        if !self.register_in_flight && self.next_register.is_some_and(|t| now >= t) {
            self.register_in_flight = true;
            out.push(self.register());
        }
        if self.phase == Phase::Registered && !self.keepalive_in_flight && self.next_keepalive.is_some_and(|t| now >= t)
        {
            self.keepalive_in_flight = true;
            self.next_keepalive = Some(now + self.s.keepalive.as_millis() as Millis);
            out.push(self.keepalive());
        }
        out
    }

    /// A final answer to a request of `kind`; for REGISTER, the challenge and the granted
    /// expiry it carried.
    pub fn answered(&mut self, kind: Kind, code: u16, challenge: Option<&str>, expires: Option<u64>, now: Millis) {
        match kind {
            Kind::Register => {
                self.register_in_flight = false;
                match code {
                    200..=299 => {
                        let asked = self.s.expires.as_secs();
                        let granted = expires.filter(|e| *e > 0).unwrap_or(asked).min(asked).max(1);
                        self.phase = Phase::Registered;
                        self.registered_until = Some(now + granted as Millis * 1000);
                        self.next_register = Some(now + granted as Millis * 500);
                        if self.failures > 0 || self.next_keepalive.is_none() {
                            // Registered anew: tell the upper at once that vigil lives.
                            self.next_keepalive = Some(now);
                        }
                        self.failures = 0;
                        self.misses = 0;
                        self.last_error = None;
                        self.answered_challenge = false;
                    }
                    401 | 407 => match challenge {
                        // A challenge to a REGISTER that answered one (and not `stale`): the
                        // password is wrong.
                        Some(c) if self.answered_challenge && !is_stale(c) => {
                            self.fail(format!("REGISTER refused with {code} after the digest answer (password?)"), now)
                        }
                        Some(c) => {
                            self.challenge = Some(c.to_owned());
                            self.nc = 0;
                            self.next_register = Some(now);
                        }
                        None => self.fail(format!("REGISTER refused with {code} without a challenge"), now),
                    },
                    _ => self.fail(format!("REGISTER refused with {code}"), now),
                }
            }
            Kind::Response | Kind::Bye => {}
            Kind::Keepalive => {
                self.keepalive_in_flight = false;
                if (200..300).contains(&code) {
                    self.misses = 0;
                    self.last_keepalive_at = Some(now);
                } else if (400..500).contains(&code) && self.phase == Phase::Registered {
                    // The upper does not know vigil any more (it restarted, or dropped the
                    // registration): register again now rather than after `misses` keepalives.
                    self.fail(format!("keepalive refused with {code}: the upper no longer knows vigil"), now);
                } else {
                    self.missed(format!("keepalive refused with {code}"), now);
                }
            }
        }
    }

    /// The TCP connection to the upper ended: what was in flight on it is lost, and a
    /// registration that stood on it (or was being made on it) starts over after the backoff.
    pub fn lost(&mut self, why: String, now: Millis) {
        let in_flight = self.register_in_flight;
        self.register_in_flight = false;
        self.keepalive_in_flight = false;
        if in_flight || self.phase == Phase::Registered {
            self.fail(why, now);
        }
    }

    /// A request of `kind` went unanswered (Timer F).
    pub fn timed_out(&mut self, kind: Kind, now: Millis) {
        match kind {
            Kind::Register => {
                self.register_in_flight = false;
                self.fail("no answer to REGISTER".into(), now);
            }
            Kind::Keepalive => {
                self.keepalive_in_flight = false;
                self.missed("a keepalive went unanswered".into(), now);
            }
            Kind::Response | Kind::Bye => {}
        }
    }

    fn missed(&mut self, why: String, now: Millis) {
        if self.phase != Phase::Registered {
            return;
        }
        self.misses += 1;
        if self.misses >= self.s.misses.max(1) {
            self.fail(format!("{why} ({} in a row): registering again", self.misses), now);
        }
    }

    /// Starts over on a new Call-ID after the backoff.
    fn fail(&mut self, why: String, now: Millis) {
        self.failures = self.failures.saturating_add(1);
        let base = (BACKOFF_MIN_MS << self.failures.saturating_sub(1).min(10)).min(BACKOFF_MAX_MS);
        // ±20 %, from the new Call-ID's randomness.
        self.call_id = token();
        let spread = u64::from_str_radix(&self.call_id[..4], 16).unwrap_or(0) as Millis % 401 - 200;
        self.next_register = Some(now + base + base * spread / 1000);
        self.phase = Phase::Failing;
        self.last_error = Some(why);
        self.registered_until = None;
        self.next_keepalive = None;
        self.misses = 0;
        self.challenge = None;
        self.answered_challenge = false;
    }

    fn register(&mut self) -> Request {
        self.cseq += 1;
        let s = &self.s;
        let uri = format!("sip:{}@{}", s.server_id, s.domain);
        let auth = self.challenge.as_deref().and_then(|c| {
            self.nc += 1;
            digest::answer(c, &s.user_id, &s.password, "REGISTER", &uri, self.nc, &token()[..16])
        });
        self.answered_challenge = auth.is_some();
        let auth = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
        let me = format!("<sip:{}@{}>", s.user_id, s.own_domain());
        let extra = format!(
            "Contact: <sip:{}@{}{}>\r\nExpires: {}\r\n{auth}",
            s.user_id,
            self.advertise,
            s.transport.uri_param(),
            s.expires.as_secs()
        );
        let (call, cseq, tag) = (self.call_id.clone(), format!("{} REGISTER", self.cseq), self.tag.clone());
        self.request(Kind::Register, &format!("REGISTER {uri}"), &tag, &me, &call, &cseq, &extra, &[])
    }

    fn keepalive(&mut self) -> Request {
        self.sn += 1;
        let body = manscdp::keepalive(self.sn, &self.s.user_id, Charset::Gb18030);
        Request { kind: Kind::Keepalive, ..self.message(body) }
    }

    /// A catalog NOTIFY to the upper: in the subscription's dialog (`sub`), or on a Call-ID of
    /// its own for an upper that takes NOTIFYs without subscribing.
    pub fn notify(&mut self, sub: Option<&Subscription>, body: Vec<u8>, now: Millis) -> Request {
        self.msg_cseq += 1;
        let (call, their_tag, our_tag, id, left) = match sub {
            Some(d) => (
                d.call_id.clone(),
                format!(";tag={}", d.their_tag),
                d.our_tag.clone(),
                d.event_id.clone(),
                ((d.until - now) / 1000).max(0),
            ),
            None => (token(), String::new(), self.tag.clone(), String::new(), 3600),
        };
        let id = if id.is_empty() { String::new() } else { format!(";id={id}") };
        let s = &self.s;
        let start = format!("NOTIFY sip:{}@{}", s.server_id, s.server_addr);
        let to = format!("<sip:{}@{}>{their_tag}", s.server_id, s.domain);
        let extra = format!(
            "Event: Catalog{id}\r\nSubscription-State: active;expires={left}\r\nContact: <sip:{}@{}{}>\r\n\
Content-Type: Application/MANSCDP+xml\r\n",
            s.user_id,
            self.advertise,
            s.transport.uri_param()
        );
        let cseq = format!("{} NOTIFY", self.msg_cseq);
        self.request(Kind::Response, &start, &our_tag, &to, &call, &cseq, &extra, &body)
    }

    /// vigil's id at the upper (the `DeviceID` of what it answers).
    pub fn user_id(&self) -> &str {
        &self.s.user_id
    }

    /// A MESSAGE to the upper carrying `body` (MANSCDP), on a Call-ID of its own.
    pub fn message(&mut self, body: Vec<u8>) -> Request {
        self.msg_cseq += 1;
        let s = &self.s;
        let start = format!("MESSAGE sip:{}@{}", s.server_id, s.domain);
        let to = format!("<sip:{}@{}>", s.server_id, s.domain);
        let (tag, cseq) = (self.tag.clone(), format!("{} MESSAGE", self.msg_cseq));
        let extra = "Content-Type: Application/MANSCDP+xml\r\n";
        self.request(Kind::Response, &start, &tag, &to, &token(), &cseq, extra, &body)
    }

    /// One request to the upper: `start` (method and Request-URI), Via at the advertised
    /// address with a fresh branch, From vigil with `from_tag`, `to`, the Call-ID and CSeq,
    /// the method's own headers (`extra`), then the common ones and `body`.
    #[allow(clippy::too_many_arguments)]
    fn request(
        &self,
        kind: Kind,
        start: &str,
        from_tag: &str,
        to: &str,
        call: &str,
        cseq: &str,
        extra: &str,
        body: &[u8],
    ) -> Request {
        let branch = format!("z9hG4bK{}", token());
        let text = format!(
            "{start} SIP/2.0\r\nVia: SIP/2.0/{via} {adv};rport;branch={branch}\r\nFrom: <sip:{user}@{own}>;tag={from_tag}\r\n\
To: {to}\r\nCall-ID: {call}\r\nCSeq: {cseq}\r\n{extra}Max-Forwards: 70\r\nUser-Agent: vigil/{ver}\r\nContent-Length: {len}\r\n\r\n",
            via = self.s.transport.via(),
            adv = self.advertise,
            user = self.s.user_id,
            own = self.s.own_domain(),
            ver = env!("CARGO_PKG_VERSION"),
            len = body.len(),
        );
        let mut bytes = text.into_bytes();
        bytes.extend_from_slice(body);
        Request { kind, branch, bytes }
    }
}

/// The upper's catalog subscription: the dialog NOTIFYs go in, until when it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub call_id: String,
    pub their_tag: String,
    pub our_tag: String,
    /// The `Event: Catalog;id=` the upper gave.
    pub event_id: String,
    pub until: Millis,
}

fn is_stale(challenge: &str) -> bool {
    digest::parse_authorization(challenge)
        .and_then(|c| c.get("stale").map(|v| v.eq_ignore_ascii_case("true")))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::sip::message::Message;

    fn settings() -> Settings {
        Settings {
            name: "city".into(),
            transport: Default::default(),
            server_id: "42010000002000000001".into(),
            domain: "4201000000".into(),
            server_addr: "127.0.0.1:15060".parse().expect("addr"),
            user_id: "42010400002000000001".into(),
            password: "12345678".into(),
            expires: Duration::from_secs(3600),
            keepalive: Duration::from_secs(60),
            misses: 3,
        }
    }

    fn header(r: &Request, name: &str) -> String {
        let m = Message::parse(&r.bytes).expect("vigil's request parses");
        m.header(name).unwrap_or_default().to_owned()
    }

    #[test]
    fn a_challenge_is_answered_on_the_same_call_and_the_refresh_comes_at_half_the_grant() {
        let mut r = Registration::new(settings(), "127.0.0.1:5061".into(), 0);
        let first = r.due(0);
        assert_eq!(first.len(), 1);
        assert_eq!(header(&first[0], "Expires"), "3600");
        assert!(header(&first[0], "Authorization").is_empty());
        assert!(r.due(10).is_empty(), "one REGISTER in flight");
        let www = "Digest realm=\"4201000000\", nonce=\"abc\", qop=\"auth\"";
        r.answered(Kind::Register, 401, Some(www), None, 20);
        let second = r.due(20);
        let auth = header(&second[0], "Authorization");
        assert!(auth.contains("username=\"42010400002000000001\"") && auth.contains("qop=auth"), "{auth}");
        assert_eq!(header(&second[0], "Call-ID"), header(&first[0], "Call-ID"), "same Call-ID");
        assert_eq!(header(&second[0], "CSeq"), "2 REGISTER", "CSeq + 1");
        // The upper grants 600 s: refreshed at 300 s, and a keepalive goes at once.
        r.answered(Kind::Register, 200, None, Some(600), 1_000);
        assert_eq!(r.view().phase, Phase::Registered);
        assert_eq!(r.view().registered_until, Some(601_000));
        let ka = r.due(1_000);
        assert_eq!(ka.iter().map(|q| q.kind).collect::<Vec<_>>(), vec![Kind::Keepalive]);
        let body = String::from_utf8_lossy(&ka[0].bytes).to_string();
        assert!(body.contains("<CmdType>Keepalive</CmdType>") && body.contains("42010400002000000001"), "{body}");
        r.answered(Kind::Keepalive, 200, None, None, 1_100);
        assert_eq!(r.next_due(), Some(61_000), "the next keepalive");
        let refresh = r.due(301_000);
        let kinds: Vec<Kind> = refresh.iter().map(|q| q.kind).collect();
        assert!(kinds.contains(&Kind::Register), "{kinds:?}");
        let reg = refresh.iter().find(|q| q.kind == Kind::Register).expect("refresh");
        assert_eq!(header(reg, "Call-ID"), header(&first[0], "Call-ID"), "a refresh keeps the Call-ID");
    }

    #[test]
    fn missed_keepalives_a_wrong_password_and_silence_start_over_on_a_new_call_with_backoff() {
        let mut r = Registration::new(settings(), "127.0.0.1:5061".into(), 0);
        let first = r.due(0);
        r.answered(Kind::Register, 200, None, None, 0);
        for n in 0..3 {
            let ka = r.due(n * 60_000);
            assert_eq!(ka.len(), 1, "keepalive {n}");
            r.timed_out(Kind::Keepalive, n * 60_000 + 32_000);
        }
        let v = r.view();
        assert_eq!(v.phase, Phase::Failing);
        assert!(v.last_error.as_deref().is_some_and(|e| e.contains("3 in a row")), "{v:?}");
        let at = v.next_attempt_at.expect("a retry");
        assert!((152_000 + 1_600..=152_000 + 2_400).contains(&at), "2 s ± 20 % after the third miss: {at}");
        let again = r.due(at);
        assert_ne!(header(&again[0], "Call-ID"), header(&first[0], "Call-ID"), "a new Call-ID after a failure");
        // A challenge after a digest answer: the password is wrong, said so, and the backoff grows.
        let www = "Digest realm=\"4201000000\", nonce=\"n1\"";
        r.answered(Kind::Register, 401, Some(www), None, at);
        let answered = r.due(at);
        let auth = header(&answered[0], "Authorization");
        assert!(!auth.contains("qop"), "no qop offered, none used: {auth}");
        r.answered(Kind::Register, 401, Some(www), None, at + 10);
        let v = r.view();
        assert!(v.last_error.as_deref().is_some_and(|e| e.contains("password")), "{v:?}");
        assert_eq!(v.failures, 2);
        let wait = v.next_attempt_at.expect("retry") - (at + 10);
        assert!((3_200..=4_800).contains(&wait), "4 s ± 20 %: {wait}");
        // Silence: Timer F on REGISTER.
        r.due(at + 10 + wait);
        r.timed_out(Kind::Register, at + 10 + wait + 32_000);
        assert_eq!(r.view().failures, 3);
        assert!(r.view().last_error.as_deref().is_some_and(|e| e.contains("no answer")));
        // However long the silence, the next attempt is at most 15 s + 20 % away.
        let mut now = at + 10 + wait + 32_000;
        for _ in 0..20 {
            let next = r.view().next_attempt_at.expect("retry");
            assert!(next - now <= 18_000, "{} ms to the next attempt", next - now);
            r.due(next);
            now = next + 32_000;
            r.timed_out(Kind::Register, now);
        }
    }

    #[test]
    fn a_lost_tcp_connection_starts_the_registration_over_and_nothing_waits_on_what_went_on_it() {
        let tcp = Settings { transport: crate::sinks::cascade::link::Transport::Tcp, ..settings() };
        let mut r = Registration::new(tcp, "127.0.0.1:5061".into(), 0);
        let first = r.due(0);
        let via = header(&first[0], "Via");
        assert!(via.starts_with("SIP/2.0/TCP 127.0.0.1:5061;"), "{via}");
        assert!(header(&first[0], "Contact").ends_with(";transport=tcp>"));
        r.answered(Kind::Register, 200, None, None, 0);
        r.due(0);
        // The connection ends with the keepalive in flight: registered again after the backoff.
        r.lost("the peer closed the connection".into(), 500);
        let v = r.view();
        assert_eq!(v.phase, Phase::Failing, "{v:?}");
        assert!(v.last_error.as_deref().is_some_and(|e| e.contains("closed")), "{v:?}");
        let at = v.next_attempt_at.expect("a retry");
        assert!((500 + 1_600..=500 + 2_400).contains(&at), "{at}");
        assert_eq!(r.due(at).iter().map(|q| q.kind).collect::<Vec<_>>(), vec![Kind::Register]);
        // A connection lost while failing with nothing in flight changes nothing.
        let mut idle = Registration::new(settings(), "127.0.0.1:5061".into(), 0);
        idle.due(0);
        idle.timed_out(Kind::Register, 32_000);
        let before = idle.view();
        idle.lost("reset".into(), 33_000);
        assert_eq!(idle.view(), before);
    }

    #[test]
    fn an_upper_that_forgot_vigil_refuses_a_keepalive_and_vigil_registers_again_at_once() {
        let mut r = Registration::new(settings(), "127.0.0.1:5061".into(), 0);
        r.due(0);
        r.answered(Kind::Register, 200, None, None, 0);
        r.due(0);
        r.answered(Kind::Keepalive, 404, None, None, 100);
        let v = r.view();
        assert_eq!(v.phase, Phase::Failing, "{v:?}");
        assert!(v.next_attempt_at.is_some_and(|t| t <= 100 + 2_400), "{v:?}");
        // A server error is one miss, not a verdict.
        let mut r = Registration::new(settings(), "127.0.0.1:5061".into(), 0);
        r.due(0);
        r.answered(Kind::Register, 200, None, None, 0);
        r.due(0);
        r.answered(Kind::Keepalive, 503, None, None, 100);
        assert_eq!(r.view().phase, Phase::Registered);
    }
}
