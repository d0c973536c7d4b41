//! Unit tests of the pure presence table: explicit instants, no runtime.

use std::sync::Arc;

use proptest::prelude::*;

use super::*;

const S: Millis = 1000;

fn obs(device: DeviceKey, at: Millis, evidence: Evidence) -> Observation {
    Observation { device, at, evidence, detail: None }
}

fn table(n: u32) -> PresenceTable {
    let mut t = PresenceTable::new();
    for k in 0..n {
        t.track(k, Arc::from(format!("dev-{k}")), "external", 0);
    }
    t
}

#[test]
fn alive_with_ttl_goes_online_then_offline_when_the_ttl_passes() {
    let mut t = table(1);
    let tr = t.observe(10 * S, &obs(0, 10 * S, Evidence::Alive { ttl_ms: 90 * S })).expect("goes online");
    assert_eq!((tr.from, tr.to, tr.reason), (State::Unknown, State::Online, Reason::Alive));
    assert_eq!(t.next_deadline(), Some(100 * S));
    assert!(t.tick(99 * S).is_empty());
    let out = t.tick(100 * S);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].to, out[0].reason, out[0].at), (State::Offline, Reason::TtlExpired, 100 * S));
    assert_eq!(t.view(0).expect("tracked").state, State::Offline);
}

#[test]
fn keepalives_extend_the_window_without_piling_up_timers() {
    let mut t = table(1);
    t.observe(0, &obs(0, 0, Evidence::SipRegister { expires_ms: 3600 * S, window_ms: 180 * S }));
    for i in 1..=100 {
        assert!(t.observe(i * 60 * S, &obs(0, i * 60 * S, Evidence::SipKeepalive { window_ms: 180 * S })).is_none());
    }
    assert!(t.timers.len() <= 2, "timer heap grew to {}", t.timers.len());
    // Registration expired at 3600 s although keepalives kept coming until 6000 s: the
    // first tick past 3600 s finds the registration closed.
    let out = t.tick(3600 * S);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].reason, Reason::RegistrationExpired);
}

#[test]
fn keepalive_timeout_marks_offline_after_three_intervals() {
    let mut t = table(1);
    t.observe(0, &obs(0, 0, Evidence::SipRegister { expires_ms: 3600 * S, window_ms: 180 * S }));
    t.observe(60 * S, &obs(0, 60 * S, Evidence::SipKeepalive { window_ms: 180 * S }));
    assert!(t.tick(239 * S).is_empty());
    let out = t.tick(240 * S);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].reason, out[0].at), (Reason::KeepaliveTimeout, 240 * S));
}

#[test]
fn a_keepalive_without_registration_does_not_make_a_registering_device_online() {
    let mut t = table(1);
    t.observe(0, &obs(0, 0, Evidence::SipRegister { expires_ms: 60 * S, window_ms: 180 * S }));
    let out = t.tick(60 * S);
    assert_eq!(out[0].reason, Reason::RegistrationExpired);
    assert!(t.observe(61 * S, &obs(0, 61 * S, Evidence::SipKeepalive { window_ms: 180 * S })).is_none());
    assert_eq!(t.view(0).expect("tracked").state, State::Offline);
}

#[test]
fn unregister_and_dead_are_offline_at_once_with_their_reason() {
    let mut t = table(2);
    t.observe(0, &obs(0, 0, Evidence::SipRegister { expires_ms: 3600 * S, window_ms: 180 * S }));
    let tr = t.observe(5 * S, &obs(0, 5 * S, Evidence::SipUnregister)).expect("offline");
    assert_eq!((tr.to, tr.reason), (State::Offline, Reason::Unregister));
    t.observe(0, &obs(1, 0, Evidence::Alive { ttl_ms: 90 * S }));
    let dead = Observation { device: 1, at: S, evidence: Evidence::Dead, detail: Some("power cut".into()) };
    let tr = t.observe(S, &dead).expect("offline");
    assert_eq!(tr.detail.as_deref(), Some("power cut"));
    // The stale timer of the dead device fires nothing.
    assert!(t.tick(1000 * S).is_empty());
}

#[test]
fn untracked_devices_are_counted_and_ignored() {
    let mut t = table(1);
    assert!(t.observe(0, &obs(7, 0, Evidence::Alive { ttl_ms: S })).is_none());
    assert_eq!(t.ignored(), 1);
}

#[test]
fn restart_keeps_open_windows_and_marks_the_gap() {
    let mut before = table(3);
    before.observe(0, &obs(0, 0, Evidence::SipRegister { expires_ms: 3600 * S, window_ms: 600 * S }));
    before.observe(0, &obs(1, 0, Evidence::Alive { ttl_ms: 30 * S }));
    let rows = before.take_dirty();
    assert_eq!(rows.len(), 2, "only devices with evidence have a row");

    let mut after = table(3);
    let now = 100 * S;
    let keyed: Vec<(DeviceKey, StateRow)> =
        rows.iter().map(|r| (r.device_id.trim_start_matches("dev-").parse().expect("dev-N"), r.clone())).collect();
    let all = after.restore(&keyed, 40 * S, now);
    // Device 0: registration and keepalive window open: down at 40 s, back at 100 s.
    let d0: Vec<_> = all.iter().filter(|t| t.device == 0).map(|t| (t.at, t.to, t.reason)).collect();
    assert_eq!(d0, vec![(40 * S, State::Unknown, Reason::GatewayDown), (now, State::Online, Reason::WindowStillOpen)]);
    // Device 1: TTL closed during the gap: unknown, not online.
    let d1: Vec<_> = all.iter().filter(|t| t.device == 1).map(|t| (t.to, t.reason)).collect();
    assert_eq!(d1, vec![(State::Unknown, Reason::GatewayDown)]);
    assert_eq!(after.view(1).expect("tracked").state, State::Unknown);
    // Device 2 never had evidence: nothing to say.
    assert!(all.iter().all(|t| t.device != 2));
    // Device 0's timers resumed: offline when its keepalive window closes at 600 s.
    let out = after.tick(600 * S);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].reason, Reason::KeepaliveTimeout);
}

proptest! {
    /// Whatever the sequence of observations and ticks: a device is online exactly when
    /// its windows say so after a tick, transitions alternate consistently, and nothing panics.
    #[test]
    fn state_always_agrees_with_the_windows(ops in proptest::collection::vec((0u32..4, 0u8..6, 1i64..200), 1..200)) {
        let mut t = table(4);
        let mut now: Millis = 0;
        let mut last: Vec<State> = vec![State::Unknown; 4];
        for (dev, kind, arg) in ops {
            now += arg * 100;
            let ev = match kind {
                0 => Evidence::Alive { ttl_ms: arg * 300 },
                1 => Evidence::Dead,
                2 => Evidence::SipRegister { expires_ms: arg * 500, window_ms: arg * 200 },
                3 => Evidence::SipKeepalive { window_ms: arg * 200 },
                4 => Evidence::SipUnregister,
                _ => Evidence::MqttMessage { timeout_ms: arg * 250, heartbeat: arg % 2 == 0 },
            };
            let mut trs = t.tick(now);
            trs.extend(t.observe(now, &obs(dev, now, ev)));
            trs.extend(t.tick(now));
            for tr in trs {
                prop_assert_eq!(tr.from, last[tr.device as usize]);
                prop_assert_ne!(tr.from, tr.to);
                last[tr.device as usize] = tr.to;
            }
            for k in 0..4u32 {
                let slot = t.slots[k as usize].as_ref().expect("tracked");
                prop_assert_eq!(slot.state, last[k as usize]);
                if slot.state == State::Online {
                    prop_assert!(slot.online_at(now), "online past its windows");
                    prop_assert!(slot.scheduled != NONE, "online without a timer");
                }
            }
        }
    }
}

/// An RTSP camera is offline for the cause its pull classified (a wrong password is not a
/// stalled stream), and the reason follows the cause while it stays down, without a new
/// transition.
#[test]
fn an_rtsp_camera_is_offline_for_its_classified_cause_and_follows_it() {
    let mut t = table(1);
    t.observe(0, &obs(0, 0, Evidence::RtspFrame { stall_ms: 10 * S }));
    let down = |fault| obs(0, 5 * S, Evidence::RtspDown { fault });
    let tr = t.observe(5 * S, &down(StreamFault::AuthFailed)).expect("offline");
    assert_eq!((tr.to, tr.reason.as_str()), (State::Offline, "auth_failed"));
    assert!(t.observe(6 * S, &down(StreamFault::Unreachable)).is_none(), "no second transition");
    assert_eq!(t.view(0).expect("tracked").reason.as_str(), "unreachable");
    for (fault, name) in [
        (StreamFault::NotFound, "not_found"),
        (StreamFault::Refused, "refused"),
        (StreamFault::SessionLimit, "session_limit"),
        (StreamFault::BadMedia, "bad_media"),
        (StreamFault::Stalled, "stream_stalled"),
        (StreamFault::Closed, "stream_closed"),
        (StreamFault::MediaError, "media_error"),
        (StreamFault::ProtocolError, "protocol_error"),
    ] {
        t.observe(7 * S, &down(fault));
        let r = t.view(0).expect("tracked").reason;
        assert_eq!((r.as_str(), Reason::parse(name)), (name, Some(r)));
    }
}
