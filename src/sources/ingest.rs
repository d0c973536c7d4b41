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
use crate::media::MediaStore;
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
    media: MediaStore,
    protocol: Protocol,
    source: &'static str,
    seqs: Mutex<HashMap<String, SeqState>>,
}

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
    pub fn new(shared: Shared, media: MediaStore, protocol: Protocol, source: &'static str) -> Ingest {
        Ingest(Arc::new(Parts { shared, media, protocol, source, seqs: Mutex::default() }))
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
        let p = &sel.profile;
        let outcomes = match profiles::map(p, &sel.captures, payload, received_at) {
            Ok(o) => o,
            Err(r) => {
                self.reject(&p.id, r.reason, r.detail.clone(), peer, payload, received_at);
                return Ok(vec![Verdict::Rejected {
                    reason: r.reason,
                    detail: r.detail,
                    device: None,
                    object_id: None,
                }]);
            }
        };
        let mut out = Vec::with_capacity(outcomes.len());
        for o in outcomes {
            out.push(match o {
                Outcome::Dropped { reason, .. } => {
                    self.count(&p.id, &format!("dropped:{reason}"));
                    Verdict::Dropped
                }
                Outcome::Rejected { refusal, device, object_id, .. } => {
                    self.reject(&p.id, refusal.reason, refusal.detail.clone(), peer, payload, received_at);
                    Verdict::Rejected { reason: refusal.reason, detail: refusal.detail, device, object_id }
                }
                Outcome::Record(m) => self.record(sel, *m, payload, peer, received_at).await?,
            });
        }
        Ok(out)
    }

    /// The device a record names, admitting it when it is new. `Err(verdict)` when its
    /// records are not taken.
    async fn device(&self, sel: &Selected, m: &Mapped) -> Result<Result<Arc<Device>, Verdict>, Unavailable> {
        let known = self.shared.registry.read().device(&m.device);
        let d = match known {
            Some(d) => d,
            None => {
                let mut attrs = fingerprint(m, Map::new());
                attrs.insert("source".into(), Value::String(self.source.into()));
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
                };
                match self.shared.registry.admit(unknown).await {
                    Ok(AdmissionOutcome::Known(d)) => d,
                    Ok(AdmissionOutcome::Added(d)) => {
                        info!(device = %d.id, profile = %sel.profile.id, admission = %d.admission, "New device from its messages.");
                        self.shared
                            .presence
                            .track(vec![(d.key, Arc::from(d.id.as_str()), d.protocol.as_str())])
                            .await
                            .ok();
                        d
                    }
                    Ok(AdmissionOutcome::Refused) => {
                        return Ok(Err(Verdict::Rejected {
                            reason: "unknown_device",
                            detail: format!("device {} is not registered and admission is closed", m.device),
                            device: Some(m.device.clone()),
                            object_id: m.object_id.clone(),
                        }))
                    }
                    Err(e) if e.kind() == crate::error::ErrorKind::InvalidInput => {
                        return Ok(Err(Verdict::Rejected {
                            reason: "bad_identity",
                            detail: e.to_string(),
                            device: Some(m.device.clone()),
                            object_id: m.object_id.clone(),
                        }))
                    }
                    Err(e) => return Err(Unavailable(e.to_string())),
                }
            }
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

    async fn record(
        &self,
        sel: &Selected,
        m: Mapped,
        raw: &[u8],
        peer: &str,
        at: Millis,
    ) -> Result<Verdict, Unavailable> {
        let p = &sel.profile;
        let device = match self.device(sel, &m).await? {
            Ok(d) => d,
            Err(v) => {
                if let Verdict::Rejected { reason, detail, .. } = &v {
                    self.reject(&p.id, reason, detail.clone(), peer, raw, at);
                }
                return Ok(v);
            }
        };
        let heartbeat = matches!(m.made, profiles::Made::Heartbeat);
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
        self.keep_attrs(&device, &m).await;

        let body = match m.made {
            profiles::Made::Heartbeat => {
                self.count(&p.id, "heartbeat");
                return Ok(Verdict::Heartbeat);
            }
            profiles::Made::Event(b) => b,
        };
        // Nothing is written for a record while the outbox is closed: a full disk holds the
        // device's push here rather than failing it on its pictures.
        self.shared.events.accepting().await;
        let mut media = Vec::with_capacity(m.images.len());
        for img in m.images {
            match self.media.put(img.bytes).await {
                Ok(s) => media.push(MediaRef { hash: s.hash, role: img.role, bytes: s.bytes, mime: s.mime.into() }),
                Err(crate::media::Error::TooLarge { size, max }) => self.shared.rejections.record(
                    at,
                    self.source,
                    "image_too_large",
                    peer.to_owned(),
                    format!("profile {} (record kept): {} image of {size} bytes over {max}", p.id, img.role),
                    &[],
                ),
                Err(e) => return Err(Unavailable(e.to_string())),
            }
        }
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
        let id = event.id.clone();
        match self.shared.events.submit(event).await {
            Ok(Stored::New) => {
                self.count(&p.id, "event");
                if let Some(seq) = m.seq {
                    self.sequence(&p.id, &device.id, seq, at).await;
                }
                Ok(Verdict::Stored { event_id: id, duplicate: false, object_id: m.object_id })
            }
            Ok(Stored::Duplicate) => {
                self.count(&p.id, "duplicate");
                debug!(device = %device.id, key = %m.dedup_key, "Duplicate record (a redelivery or replay).");
                Ok(Verdict::Stored { event_id: id, duplicate: true, object_id: m.object_id })
            }
            Err(e) => Err(Unavailable(e.to_string())),
        }
    }

    /// Keeps what a heartbeat (or a fingerprint) says about the device, when it changed.
    async fn keep_attrs(&self, device: &Device, m: &Mapped) {
        let attrs = fingerprint(m, m.attrs.clone());
        if attrs.is_empty() || attrs.iter().all(|(k, v)| device.attrs.get(k) == Some(v)) {
            return;
        }
        if let Err(e) = self.shared.registry.merge_attrs_many(vec![(device.id.clone(), attrs)]).await {
            warn!(device = %device.id, error = %e, "Cannot keep device attributes.");
        }
    }

    /// Counts records missing between a device's sequence numbers: a number above the highest
    /// seen opens the gap below it, a late number inside a gap fills it (concurrent commits
    /// and replays arrive out of order). The net count is kept in the device's `seq_gaps`
    /// attribute (written at most every 5 s per device) and summed per profile in
    /// `vigil_event_sequence_gaps{profile}`.
    async fn sequence(&self, profile: &str, device: &str, seq: i64, now: Millis) {
        let write = {
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
        };
        if let Some(total) = write {
            debug!(device, total, "Sequence gaps.");
            let mut attrs = Map::new();
            attrs.insert("seq_gaps".into(), Value::from(total));
            let _ = self.shared.registry.merge_attrs_many(vec![(device.to_owned(), attrs)]).await;
        }
    }
}
