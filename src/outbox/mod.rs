//! The relay's outbox: which upstream takes which event (`Routes`), the 48-digit GA/T 1400
//! id each event is known by upstream (`object_id`), and the delivery rows the event writer
//! commits in the same transaction as the events (`store`). The runner that claims and
//! delivers them is `runner`. Owns the `deliveries` table and `events.object_id`.

pub mod failure;
pub mod gate;
pub mod runner;
pub mod store;
pub mod subscriptions;

use crate::clock::Millis;
use crate::event::{Event, EventBody, EventKind};

/// Which events go to which upstream: (target name, kinds it takes).
#[derive(Debug, Clone, Default)]
pub struct Routes(pub Vec<(String, Vec<EventKind>)>);

impl Routes {
    /// The targets that take an event of `kind`.
    pub fn targets(&self, kind: EventKind) -> impl Iterator<Item = &str> {
        self.0.iter().filter(move |(_, kinds)| kinds.contains(&kind)).map(|(t, _)| t.as_str())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every target delivery rows are written for.
    pub fn names(&self) -> Vec<String> {
        self.0.iter().map(|(t, _)| t.clone()).collect()
    }
}

fn digits(s: &str, n: usize) -> bool {
    s.len() == n && s.bytes().all(|b| b.is_ascii_digit())
}

/// A stable number in [0, 100000) from the event id's bytes (FNV-1a), `salt` picking another.
fn serial(id: &str, salt: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ salt;
    for b in id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h % 100_000
}

/// The 48-digit GA/T 1400 object id of an event that upstream view libraries take (faces and
/// vehicles): the checkpoint's own id when it sent a valid one, else derived from the event as
/// the implementations observed do it (shared reference relay.md §1.5): device (20, the
/// gateway's id for a device without a 20-digit id) + "02" + device time (14) + serial (5) +
/// object type (2: "06" face, "02" motor vehicle) + serial (5). The serials come from the
/// event's UUID, so the same event always gets the same id; it is stored with the event and
/// never derived again.
pub fn object_id(e: &Event, gateway_id: &str, tz: &chrono_tz::Tz) -> Option<String> {
    let (own, kind) = match &e.body {
        EventBody::FaceCapture(b) => (b.capture_id.as_deref(), "06"),
        EventBody::VehiclePass(b) => (b.capture_id.as_deref(), "02"),
        _ => return None,
    };
    if let Some(id) = own.filter(|id| digits(id, 48)) {
        return Some(id.to_owned());
    }
    let device = if digits(&e.device_id, 20) { e.device_id.as_str() } else { gateway_id };
    let time = local_time(e.occurred_at, tz);
    Some(format!("{device}02{time}{:05}{kind}{:05}", serial(&e.id, 1), serial(&e.id, 2)))
}

fn local_time(at: Millis, tz: &chrono_tz::Tz) -> String {
    let t = crate::protocol::gat1400::codec::local_time(at, tz);
    if digits(&t, 14) {
        t
    } else {
        "19700101000000".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{FaceCaptureBody, TimeSource, VehiclePassBody};

    fn event(body: EventBody, device: &str, id: &str) -> Event {
        Event {
            id: id.into(),
            dedup_key: "k".into(),
            source: "gat1400".into(),
            device_id: device.into(),
            org_id: None,
            occurred_at: 1_779_840_000_000,
            occurred_at_raw: None,
            time_source: TimeSource::Device,
            received_at: 0,
            seq: None,
            offline_replay: false,
            profile: None,
            media: vec![],
            body,
        }
    }

    #[test]
    fn object_ids_are_48_digits_stable_and_keep_a_valid_own_id() {
        let tz = chrono_tz::Asia::Shanghai;
        let gw = "42010400005030000001";
        let face = event(EventBody::FaceCapture(FaceCaptureBody::default()), "42010400001190000001", "0190-a");
        let id = object_id(&face, gw, &tz).expect("a face has one");
        assert!(digits(&id, 48), "{id}");
        assert!(id.starts_with("4201040000119000000102"), "{id}");
        assert_eq!(&id[36 + 5..36 + 7], "06");
        assert_eq!(object_id(&face, gw, &tz), Some(id.clone()), "the same event, the same id");
        let other = event(EventBody::FaceCapture(FaceCaptureBody::default()), "42010400001190000001", "0190-b");
        assert_ne!(object_id(&other, gw, &tz), Some(id), "another event, another id");
        // A device without a 20-digit id is named by the gateway.
        let car = event(EventBody::VehiclePass(VehiclePassBody::default()), "barrier-7", "x");
        let id = object_id(&car, gw, &tz).expect("a vehicle has one");
        assert!(id.starts_with(gw) && &id[41..43] == "02", "{id}");
        // The checkpoint's own id is kept when valid, replaced when not.
        let own = "4201040000119000000102202605271200000001206000012";
        let kept = event(
            EventBody::FaceCapture(FaceCaptureBody { capture_id: Some(own[..48].into()), ..Default::default() }),
            "42010400001190000001",
            "y",
        );
        assert_eq!(object_id(&kept, gw, &tz).as_deref(), Some(&own[..48]));
        let bad = event(
            EventBody::FaceCapture(FaceCaptureBody { capture_id: Some("F-17".into()), ..Default::default() }),
            "42010400001190000001",
            "y",
        );
        assert_ne!(object_id(&bad, gw, &tz).as_deref(), Some("F-17"));
        assert!(object_id(&event(EventBody::Alarm(Default::default()), "d", "z"), gw, &tz).is_none());
    }
}
