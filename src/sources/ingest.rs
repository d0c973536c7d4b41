//! From a profile-mapped message to the registry, presence and the event log: the part every
//! profile-driven source shares (MQTT, GA/T 1400, HTTP push). Per record: admit an unknown
//! device under the admission policy (with the matched profile as the suggestion), refuse
//! records of devices not approved, feed presence (`heartbeat` or `data`), keep heartbeat
//! attributes, store images, commit the event (resolving only once it is committed, so the
//! source acknowledges its peer only then), count sequence gaps. Every refusal is counted
//! and kept with the raw message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};
use tracing::{debug, info, warn};

use super::Shared;
use crate::clock::Millis;
use crate::event::{Event, Evidence, MediaRef, Observation};
use crate::events::Stored;
use crate::images::ImageStore;
use crate::profiles::{self, Mapped, Outcome, Selected};
use crate::registry::{Admission, AdmissionOutcome, Device, Protocol, UnknownDevice};

/// What became of one record.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Committed (or found committed before: `duplicate`). `event_id` is the stored id;
    /// `object_id` the record's own id (GA/T 1400 `FaceID`), when its profile names one.
    Stored { event_id: String, duplicate: bool, object_id: Option<String> },
    /// A heartbeat: presence fed, nothing stored.
    Heartbeat,
    /// A rule dropped it (counted).
    Dropped,
    /// Refused: counted and kept in the rejections log.
    Rejected { reason: &'static str, detail: String, device: Option<String>, object_id: Option<String> },
}

/// One message as it arrived, for `Ingest::messages`.
pub struct Arrived<'a> {
    pub sel: &'a Selected,
    pub payload: &'a [u8],
    pub peer: &'a str,
    /// The authenticated device that sent it, where the source knows one (a registered
    /// GA/T 1400 view library): its records may name only itself or a device it carries.
    pub speaker: Option<&'a str>,
    /// Where it came from, as the admission limits count new devices: a source address, or
    /// `None` for a broker relaying many devices' messages.
    pub origin: Option<&'a str>,
    pub received_at: Millis,
}

/// A record prepared for the commit.
struct Ready {
    event: Event,
    profile: String,
    seq: Option<i64>,
    object_id: Option<String>,
    at: Millis,
}

enum Step {
    Done(Verdict),
    Ready(Box<Ready>),
}

/// The store cannot take records now; the source must not acknowledge, so the peer sends
/// again.
#[derive(Debug, Clone, thiserror::Error)]
#[error("store unavailable: {0}")]
pub struct Unavailable(pub String);

#[derive(Default)]
struct SeqState {
    /// Highest sequence number seen.
    last: i64,
    /// Numbers below `last` not seen (net of late arrivals).
    gaps: u64,
    written_at: Millis,
    written: u64,
}

/// Shared by the profile-driven sources. Cheap to clone (one `Arc`): the MQTT source clones
/// it for every message it takes.
#[derive(Clone)]
pub struct Ingest(Arc<Parts>);

/// What an `Ingest` holds.
pub struct Parts {
    shared: Shared,
    media: ImageStore,
    protocol: Protocol,
    source: &'static str,
    seqs: Mutex<HashMap<String, SeqState>>,
    /// When each device's message evidence last went to presence, and whether it was a
    /// heartbeat (`liveness`).
    told: Mutex<HashMap<crate::registry::DeviceKey, (Millis, bool)>>,
}

/// Message evidence of one device closer together than this is told to presence once: a
/// device's online window (its profile's timeout, tens of seconds) is then at most this much
/// shorter than exact, and presence is not woken for every message of a burst.
pub const LIVENESS_COALESCE_MS: Millis = 1_000;

impl std::ops::Deref for Ingest {
    type Target = Parts;
    fn deref(&self) -> &Parts {
        &self.0
    }
}

/// `attrs` with the record's fingerprint (model, firmware) added.
fn fingerprint(m: &Mapped, mut attrs: Map<String, Value>) -> Map<String, Value> {
    for (k, v) in [("model", &m.model), ("firmware", &m.firmware)] {
        if let Some(v) = v {
            attrs.insert(k.into(), Value::String(v.clone()));
        }
    }
    attrs
}

/// Largest sequence jump still counted as missing records (larger: the device was reset or
/// renumbered).
const MAX_GAP: i64 = 1_000_000;

impl Ingest {
    pub fn new(shared: Shared, media: ImageStore, protocol: Protocol, source: &'static str) -> Ingest {
        Ingest(Arc::new(Parts { shared, media, protocol, source, seqs: Mutex::default(), told: Mutex::default() }))
    }

    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    fn count(&self, profile: &str, outcome: &str) {
        self.shared.metrics.profile_outcomes.with_label_values(&[profile, outcome]).inc();
    }

    fn reject(&self, profile: &str, reason: &'static str, detail: String, peer: &str, raw: &[u8], at: Millis) {
        self.count(profile, &format!("rejected:{reason}"));
        self.shared.rejections.record(
            at,
            self.source,
            reason,
            peer.to_owned(),
            format!("profile {profile}: {detail}"),
            raw,
        );
    }

    /// Maps and takes one message that arrived for `sel`. One verdict per record, in order.
    pub async fn message(
        &self,
        sel: &Selected,
        payload: &[u8],
        peer: &str,
        received_at: Millis,
    ) -> Result<Vec<Verdict>, Unavailable> {
        self.message_from(sel, payload, (peer, None), None, received_at).await
    }

    /// As `message`, for a message an authenticated device (`speaker`) sent; `(peer,
    /// origin)`: who sent it, for the rejections log, and its address, for the limits.
    pub async fn message_from(
        &self,
        sel: &Selected,
        payload: &[u8],
        (peer, origin): (&str, Option<&str>),
        speaker: Option<&str>,
        received_at: Millis,
    ) -> Result<Vec<Verdict>, Unavailable> {
        let mut all = self.messages(&[Arrived { sel, payload, peer, speaker, origin, received_at }]).await?;
        Ok(all.pop().unwrap_or_default())
    }

    /// Maps and takes several messages (one verdict list per message, each in record order),
    /// committing their records together: one submission to the event writer for the lot,
    /// which is what lets a source that takes a burst pay per batch rather than per record.
    pub async fn messages(&self, arrived: &[Arrived<'_>]) -> Result<Vec<Vec<Verdict>>, Unavailable> {
        let mut out: Vec<Vec<Verdict>> = Vec::with_capacity(arrived.len());
        // Records ready to commit, and where their verdict goes (message, record).
        let mut ready: Vec<Ready> = Vec::new();
        let mut places: Vec<(usize, usize)> = Vec::new();
        for (i, a) in arrived.iter().enumerate() {
            let p = &a.sel.profile;
            let outcomes = match profiles::map(p, &a.sel.captures, a.payload, a.received_at) {
                Ok(o) => o,
                Err(r) => {
                    self.reject(&p.id, r.reason, r.detail.clone(), a.peer, a.payload, a.received_at);
                    out.push(vec![Verdict::Rejected {
                        reason: r.reason,
                        detail: r.detail,
                        device: None,
                        object_id: None,
                    }]);
                    continue;
                }
            };
            let mut verdicts = Vec::with_capacity(outcomes.len());
            for o in outcomes {
                verdicts.push(match o {
                    Outcome::Dropped { reason, .. } => {
                        self.count(&p.id, &format!("dropped:{reason}"));
                        Verdict::Dropped
                    }
                    Outcome::Rejected { refusal, device, object_id, .. } => {
                        self.reject(&p.id, refusal.reason, refusal.detail.clone(), a.peer, a.payload, a.received_at);
                        Verdict::Rejected { reason: refusal.reason, detail: refusal.detail, device, object_id }
                    }
                    Outcome::Record(m) => match self.prepare(a, *m).await? {
                        Step::Done(v) => v,
                        Step::Ready(r) => {
                            places.push((i, verdicts.len()));
                            ready.push(*r);
                            // Replaced by the commit's verdict below.
                            Verdict::Dropped
                        }
                    },
                });
            }
            out.push(verdicts);
        }
        for ((i, j), v) in places.into_iter().zip(self.commit(ready).await?) {
            out[i][j] = v;
        }
        Ok(out)
    }

    /// The device a record names, admitting it when it is new. `Err(verdict)` when its
    /// records are not taken.
    async fn device(
        &self,
        sel: &Selected,
        m: &Mapped,
        speaker: Option<&str>,
        origin: Option<&str>,
    ) -> Result<Result<Arc<Device>, Verdict>, Unavailable> {
        let known = self.shared.registry.read().device(&m.device);
        if let (Some(s), Some(d)) = (speaker, &known) {
            if let Some(why) = self.not_carried(s, d) {
                return Ok(Err(Verdict::Rejected {
                    reason: "not_carried",
                    detail: why,
                    device: Some(d.id.clone()),
                    object_id: m.object_id.clone(),
                }));
            }
        }
        let d = match known {
            Some(d) => d,
            // Boxed: admission is rare, and its future would make every message's larger.
            None => match Box::pin(self.admit(sel, m, speaker, origin)).await? {
                Ok(d) => d,
                Err(v) => return Ok(Err(v)),
            },
        };
        let refused = match d.admission {
            Admission::Approved if d.enabled => None,
            Admission::Approved => Some(("device_disabled", "the device is disabled")),
            Admission::Quarantined => Some(("quarantined", "the device waits for an operator's approval")),
            Admission::Rejected => Some(("device_rejected", "an operator rejected the device")),
        };
        Ok(match refused {
            None => Ok(d),
            Some((reason, why)) => Err(Verdict::Rejected {
                reason,
                detail: format!("{}: {why}", d.id),
                device: Some(d.id.clone()),
                object_id: m.object_id.clone(),
            }),
        })
    }

    /// Why `speaker` may not file a record for `d`, or `None` when it may: `d` is the speaker
    /// itself, one of its channels, or a device of this source placed under it (its `via`
    /// attribute, set when the speaker first named it or by an operator).
    fn not_carried(&self, speaker: &str, d: &Device) -> Option<String> {
        if d.id == speaker {
            return None;
        }
        if d.protocol != self.protocol {
            return Some(format!(
                "DeviceID {} is a {} device: {speaker} cannot file records or presence for it",
                d.id,
                d.protocol.as_str()
            ));
        }
        let via = d.attrs.get("via").and_then(Value::as_str);
        let channel =
            || self.shared.registry.read().channels(speaker).is_some_and(|chs| chs.iter().any(|c| c.id == d.id));
        if via == Some(speaker) || channel() {
            return None;
        }
        Some(format!("DeviceID {} is neither {speaker} nor a device it carries", d.id))
    }

    /// A device the registry does not know yet: admitted (or refused) by the policy; a device
    /// first named by an authenticated `speaker` is placed under it (`via`).
    async fn admit(
        &self,
        sel: &Selected,
        m: &Mapped,
        speaker: Option<&str>,
        origin: Option<&str>,
    ) -> Result<Result<Arc<Device>, Verdict>, Unavailable> {
        let mut attrs = fingerprint(m, Map::new());
        attrs.insert("source".into(), Value::String(self.source.into()));
        if let Some(s) = speaker {
            attrs.insert("via".into(), Value::String(s.to_owned()));
        }
        if let Some(v) = &m.site {
            attrs.insert("site".into(), Value::String(v.clone()));
        }
        let org_id = m.site.as_ref().filter(|s| self.shared.registry.read().org(s).is_some()).cloned();
        let unknown = UnknownDevice {
            id: m.device.clone(),
            protocol: self.protocol,
            kind: Some(sel.profile.kind),
            name: m.name.clone(),
            attrs,
            org_id,
            profile: Some(sel.profile.name.clone()),
            origin: origin.map(str::to_owned),
        };
        match self.shared.registry.admit(unknown).await {
            Ok(AdmissionOutcome::Known(d)) => Ok(Ok(d)),
            Ok(AdmissionOutcome::Added(d)) => {
                info!(device = %d.id, profile = %sel.profile.id, admission = %d.admission, "New device from its messages.");
                self.shared.presence.track(vec![(d.key, Arc::from(d.id.as_str()), d.protocol.as_str())]).await.ok();
                Ok(Ok(d))
            }
            Ok(AdmissionOutcome::Refused(r)) => Ok(Err(Verdict::Rejected {
                reason: {
                    self.shared.metrics.admission_refusals.with_label_values(&[self.source, r.reason()]).inc();
                    "unknown_device"
                },
                detail: format!("device {} is not registered: {}", m.device, r.detail()),
                device: Some(m.device.clone()),
                object_id: m.object_id.clone(),
            })),
            Err(e) if e.kind() == crate::error::ErrorKind::InvalidInput => Ok(Err(Verdict::Rejected {
                reason: "bad_identity",
                detail: e.to_string(),
                device: Some(m.device.clone()),
                object_id: m.object_id.clone(),
            })),
            Err(e) => Err(Unavailable(e.to_string())),
        }
    }

    /// Everything for one record up to its commit: its device (admitted when new), presence,
    /// attributes, pictures, the event. `Step::Done` when nothing is to be committed.
    async fn prepare(&self, a: &Arrived<'_>, m: Mapped) -> Result<Step, Unavailable> {
        let (sel, raw, peer, at) = (a.sel, a.payload, a.peer, a.received_at);
        let p = &sel.profile;
        let device = match self.device(sel, &m, a.speaker, a.origin).await? {
            Ok(d) => d,
            Err(v) => {
                if let Verdict::Rejected { reason, detail, .. } = &v {
                    self.reject(&p.id, reason, detail.clone(), peer, raw, at);
                }
                return Ok(Step::Done(v));
            }
        };
        let heartbeat = matches!(m.made, profiles::Made::Heartbeat);
        if self.liveness_due(device.key, at, heartbeat, p.liveness.timeout_ms) {
            let _ = self
                .shared
                .presence
                .observe(Observation {
                    device: device.key,
                    at,
                    evidence: Evidence::MqttMessage { timeout_ms: p.liveness.timeout_ms, heartbeat },
                    detail: None,
                })
                .await;
        }
        for w in &m.warnings {
            self.shared.rejections.record(
                at,
                self.source,
                w.reason,
                peer.to_owned(),
                format!("profile {} (record kept): {}", p.id, w.detail),
                raw,
            );
        }
        if let Some(attrs) = changed_attrs(&device, &m) {
            // Boxed: a write that happens when a device's attributes change, not per message.
            Box::pin(self.keep_attrs(&device, attrs)).await;
        }

        let body = match m.made {
            profiles::Made::Heartbeat => {
                self.count(&p.id, "heartbeat");
                return Ok(Step::Done(Verdict::Heartbeat));
            }
            profiles::Made::Event(b) => b,
        };
        // Nothing is written for a record while the outbox is closed: a full disk holds the
        // device's push here rather than failing it on its pictures.
        self.shared.events.accepting().await;
        let media = if m.images.is_empty() {
            Vec::new()
        } else {
            // Boxed: only records with pictures pay for the store's future.
            Box::pin(self.store_images(m.images, &p.id, peer, at)).await?
        };
        let event = Event {
            id: Event::new_id(),
            dedup_key: m.dedup_key.clone(),
            source: self.source.into(),
            device_id: device.id.clone(),
            org_id: device.org_id.clone(),
            occurred_at: m.occurred_at,
            occurred_at_raw: m.occurred_at_raw,
            time_source: m.time_source,
            received_at: at,
            seq: m.seq,
            offline_replay: m.offline_replay,
            profile: Some(p.id.clone()),
            media,
            body,
        };
        Ok(Step::Ready(Box::new(Ready { event, profile: p.id.clone(), seq: m.seq, object_id: m.object_id, at })))
    }

    /// Commits prepared records in one submission and counts each outcome.
    async fn commit(&self, ready: Vec<Ready>) -> Result<Vec<Verdict>, Unavailable> {
        if ready.is_empty() {
            return Ok(Vec::new());
        }
        let mut rest = Vec::with_capacity(ready.len());
        let mut events = Vec::with_capacity(ready.len());
        for r in ready {
            events.push((r.event, None));
            rest.push((r.profile, r.seq, r.object_id, r.at));
        }
        let ids: Vec<(String, String)> = events.iter().map(|(e, _)| (e.id.clone(), e.device_id.clone())).collect();
        let stored = self.shared.events.submit_many(events).await.map_err(|e| Unavailable(e.to_string()))?;
        let mut out = Vec::with_capacity(stored.len());
        for ((stored, (profile, seq, object_id, at)), (event_id, device)) in stored.into_iter().zip(rest).zip(ids) {
            out.push(match stored {
                Stored::New => {
                    self.count(&profile, "event");
                    if let Some(total) = seq.and_then(|seq| self.sequence(&profile, &device, seq, at)) {
                        // Boxed: written at most every 5 s per device, not per record.
                        Box::pin(self.keep_gaps(&device, total)).await;
                    }
                    Verdict::Stored { event_id, duplicate: false, object_id }
                }
                Stored::Duplicate => {
                    self.count(&profile, "duplicate");
                    debug!(device = %device, "Duplicate record (a redelivery or replay).");
                    Verdict::Stored { event_id, duplicate: true, object_id }
                }
            });
        }
        Ok(out)
    }

    /// Whether this message's evidence must go to presence: the first of a device, a change
    /// between heartbeat and data, or the first after `LIVENESS_COALESCE_MS` (a tenth of the
    /// timeout for very short timeouts).
    fn liveness_due(&self, device: crate::registry::DeviceKey, at: Millis, heartbeat: bool, timeout_ms: i64) -> bool {
        let every = LIVENESS_COALESCE_MS.min(timeout_ms / 10);
        let mut told = self.told.lock().unwrap_or_else(|p| p.into_inner());
        match told.get_mut(&device) {
            Some((last, kind)) if *kind == heartbeat && at >= *last && at - *last < every => false,
            Some(entry) => {
                *entry = (at, heartbeat);
                true
            }
            None => {
                told.insert(device, (at, heartbeat));
                true
            }
        }
    }

    /// Forgets what presence was told of a device (its last will came: the next message is
    /// news again).
    pub fn forget_liveness(&self, device: crate::registry::DeviceKey) {
        self.told.lock().unwrap_or_else(|p| p.into_inner()).remove(&device);
    }

    /// Stores a record's pictures (once each, by content); one too large, or not a JPEG or
    /// PNG, is left out and counted, the record kept.
    async fn store_images(
        &self,
        images: Vec<profiles::Image>,
        profile: &str,
        peer: &str,
        at: Millis,
    ) -> Result<Vec<MediaRef>, Unavailable> {
        let mut media = Vec::with_capacity(images.len());
        for img in images {
            match self.media.put(img.bytes).await {
                Ok(s) => media.push(MediaRef { hash: s.hash, role: img.role, bytes: s.bytes, mime: s.mime.into() }),
                Err(crate::images::Error::TooLarge { size, max }) => self.shared.rejections.record(
                    at,
                    self.source,
                    "image_too_large",
                    peer.to_owned(),
                    format!("profile {profile} (record kept): {} image of {size} bytes over {max}", img.role),
                    &[],
                ),
                Err(e @ crate::images::Error::NotAnImage { .. }) => self.shared.rejections.record(
                    at,
                    self.source,
                    "not_an_image",
                    peer.to_owned(),
                    format!("profile {profile} (record kept, picture refused): {} {e}", img.role),
                    &[],
                ),
                Err(e) => return Err(Unavailable(e.to_string())),
            }
        }
        Ok(media)
    }

    /// Keeps what a heartbeat (or a fingerprint) says about the device (`changed_attrs`).
    async fn keep_attrs(&self, device: &Device, attrs: Map<String, Value>) {
        if let Err(e) = self.shared.registry.merge_attrs_many(vec![(device.id.clone(), attrs)]).await {
            warn!(device = %device.id, error = %e, "Cannot keep device attributes.");
        }
    }

    /// Counts records missing between a device's sequence numbers: a number above the highest
    /// seen opens the gap below it, a late number inside a gap fills it (concurrent commits
    /// and replays arrive out of order). The net count is kept in the device's `seq_gaps`
    /// attribute (written at most every 5 s per device) and summed per profile in
    /// `vigil_event_sequence_gaps{profile}`.
    /// Answers the net count to write to the device's attributes when it is due.
    fn sequence(&self, profile: &str, device: &str, seq: i64, now: Millis) -> Option<u64> {
        {
            let mut seqs = self.seqs.lock().unwrap_or_else(|p| p.into_inner());
            let st = seqs.entry(device.to_owned()).or_insert_with(|| SeqState {
                last: seq,
                gaps: 0,
                written_at: 0,
                written: 0,
            });
            let before = st.gaps;
            if seq > st.last {
                let missing = seq - st.last - 1;
                if missing <= MAX_GAP {
                    st.gaps += missing as u64;
                }
                st.last = seq;
            } else if seq < st.last && st.gaps > 0 && st.last - seq <= MAX_GAP {
                st.gaps -= 1;
            }
            let delta = st.gaps as i64 - before as i64;
            if delta != 0 {
                self.shared.metrics.sequence_gaps.with_label_values(&[profile]).add(delta);
            }
            if st.gaps != st.written && now - st.written_at >= 5_000 {
                st.written = st.gaps;
                st.written_at = now;
                Some(st.gaps)
            } else {
                None
            }
        }
    }

    async fn keep_gaps(&self, device: &str, total: u64) {
        debug!(device, total, "Sequence gaps.");
        let mut attrs = Map::new();
        attrs.insert("seq_gaps".into(), Value::from(total));
        let _ = self.shared.registry.merge_attrs_many(vec![(device.to_owned(), attrs)]).await;
    }
}

/// What a heartbeat (or a fingerprint) says about the device, when it differs from what the
/// registry holds; `None` (the usual case) when there is nothing to write.
fn changed_attrs(device: &Device, m: &Mapped) -> Option<Map<String, Value>> {
    if m.attrs.is_empty() && m.model.is_none() && m.firmware.is_none() {
        return None;
    }
    let attrs = fingerprint(m, m.attrs.clone());
    (!attrs.is_empty() && !attrs.iter().all(|(k, v)| device.attrs.get(k) == Some(v))).then_some(attrs)
}
