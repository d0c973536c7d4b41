//! The GA/T 1400 upstream: vigil as a lower platform pushing to an upper view library
//! (视图库) — the district's or the city's. `client` speaks the protocol (digest
//! registration, keepalive, list pushes answered per object), `objects` turns events into
//! GA/T 1400 objects, and `Gat1400` is the sink the outbox runner drives: it registers when
//! it must (first use, any 401, a failed keepalive), keeps alive when idle, and answers each
//! record by its own entry in the platform's answer.

pub mod client;
pub mod objects;

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;
use tracing::info;

use crate::backoff::backoff;
use crate::event::EventKind;
use crate::images::ImageStore;
use crate::outbox::runner::{Delivery, FailureKind, Sink, SinkError};
use crate::outbox::store::{Claimed, Refusal};
use client::{Client, Collection, Error, Outcome};

/// The kinds GA/T 1400 has standard objects for.
pub const KINDS: [EventKind; 2] = [EventKind::FaceCapture, EventKind::VehiclePass];
/// The kinds that go by the extension path, when the upstream has one.
pub const EXTENSION_KINDS: [EventKind; 4] =
    [EventKind::Access, EventKind::Alarm, EventKind::Status, EventKind::OnlineRate];

/// The most one push request carries (the JSON of its objects, pictures inline): upper
/// platforms commonly refuse bodies over a few MB.
const MAX_REQUEST: usize = 2 << 20;
/// A keepalive after this long without any exchange.
const KEEPALIVE: Duration = Duration::from_secs(60);
/// Registration attempts while the upstream refuses or is away: backoff between these.
const REGISTER_MIN: Duration = Duration::from_secs(1);
const REGISTER_MAX: Duration = Duration::from_secs(300);

/// A record carried in a notification: (index in the batch, list key, object key, object,
/// the id listed in `InfoIDs`).
type Carried = (usize, &'static str, &'static str, serde_json::Value, String);

pub struct Gat1400 {
    client: Client,
    /// Our id as the platform knows us (20 digits): objects of devices without a 20-digit id
    /// are sent as from it.
    user_id: String,
    media: ImageStore,
    tz: chrono_tz::Tz,
    /// The extension path prefix under the base URL (`/Community`), when configured.
    extension: Option<String>,
    /// Subscription mode: records go as notifications to the subscriptions the upper view
    /// library made with us (the outbox database and this upstream's name), not as pushes.
    subscription: Option<(crate::db::Db, String)>,
    registered: bool,
    last_contact: Instant,
    register_failures: u32,
    retry_register_at: Instant,
}

impl Gat1400 {
    pub fn new(
        url: &str,
        user_id: &str,
        password: &str,
        media: ImageStore,
        tz: chrono_tz::Tz,
        extension: &str,
    ) -> Result<Gat1400, Error> {
        Ok(Gat1400 {
            client: Client::new(url, user_id, password)?,
            user_id: user_id.to_owned(),
            media,
            tz,
            extension: (!extension.is_empty()).then(|| format!("/{}", extension.trim_matches('/'))),
            subscription: None,
            registered: false,
            last_contact: Instant::now(),
            register_failures: 0,
            retry_register_at: Instant::now(),
        })
    }

    /// Subscription mode: deliver to what the upper view library subscribed to.
    pub fn subscription_mode(mut self, db: crate::db::Db, target: &str) -> Gat1400 {
        self.subscription = Some((db, target.to_owned()));
        self
    }

    async fn pictures(&self, c: &Claimed) -> Result<Vec<(String, Vec<u8>)>, SinkError> {
        let mut pictures = Vec::with_capacity(c.event.media.len());
        for m in &c.event.media {
            match self.media.get(&m.hash).await {
                Ok(Some(bytes)) => pictures.push((m.role.clone(), bytes)),
                // A picture that is gone (pruned) does not hold the record back.
                Ok(None) => {}
                Err(e) => {
                    return Err(SinkError::new(FailureKind::Local, format!("cannot read picture {}: {e}", m.hash)))
                }
            }
        }
        Ok(pictures)
    }

    fn device_of<'a>(&'a self, c: &'a Claimed) -> &'a str {
        if c.event.device_id.len() == 20 && c.event.device_id.bytes().all(|b| b.is_ascii_digit()) {
            c.event.device_id.as_str()
        } else {
            self.user_id.as_str()
        }
    }

    /// Subscription mode: each record to every subscription in force that wants its
    /// category, as `SubscribeNotificationObject`s (one per subscription and chunk) posted to
    /// the subscription's `ReceiveAddr`; a record is delivered when every notification that
    /// carried it was answered 0.
    async fn notify(
        &mut self,
        db: &crate::db::Db,
        target: &str,
        batch: &[Claimed],
    ) -> Result<Vec<Delivery>, SinkError> {
        use crate::outbox::subscriptions::{self, CATEGORY_STATUS};
        use serde_json::json;
        self.ensure_registered().await?;
        let now = crate::clock::now_ms();
        let subs = subscriptions::live(db, target)
            .await
            .map_err(|e| SinkError::new(FailureKind::Local, format!("cannot read subscriptions: {e}")))?;
        let in_force =
            |s: &subscriptions::Subscription| s.begin_at.is_none_or(|t| t <= now) && s.end_at.is_none_or(|t| now < t);
        if !subs.iter().any(in_force) {
            // A subscription that ended while records wait is an alarm (the city stops
            // receiving), not the quiet wait before the upper first subscribes.
            return Err(match subscriptions::lapsed(db, target, now).await {
                Ok(Some(l)) => SinkError::new(
                    FailureKind::SubscriptionLapsed,
                    format!(
                        "{}: the upper view library's subscription {} was {}; no subscription is in force and records wait",
                        subscriptions::LAPSED,
                        l.id,
                        l.why
                    ),
                ),
                _ => SinkError::new(
                    FailureKind::NotSubscribed,
                    "no subscription of the upper view library is in force; records wait",
                ),
            });
        }
        let mut out: Vec<Option<Delivery>> = vec![None; batch.len()];
        // Per subscription: (record index, list key, object key, object, info id).
        let mut per_sub: Vec<Vec<Carried>> = vec![Vec::new(); subs.len()];
        for (i, c) in batch.iter().enumerate() {
            let Some(category) = subscriptions::category(c.event.kind()) else {
                out[i] = Some(Delivery::Rejected(
                    format!("GA/T 1400 subscriptions have no category for a {} record", c.event.kind().as_str()).into(),
                ));
                continue;
            };
            let wanted: Vec<usize> = subs
                .iter()
                .enumerate()
                .filter(|(_, s)| s.wants(category, &c.event.device_id, &self.user_id, now))
                .map(|(k, _)| k)
                .collect();
            if wanted.is_empty() {
                out[i] = Some(Delivery::Rejected(
                    format!("no subscription of the upper view library covers category {category}").into(),
                ));
                continue;
            }
            let device = self.device_of(c).to_owned();
            let (list, key, object, info_id) = if category == CATEGORY_STATUS {
                let online = matches!(c.event.body, crate::event::EventBody::Status { online: true, .. });
                let o = json!({
                    "ApeID": device, "IsOnline": if online { "1" } else { "0" },
                    "CurrentTime": crate::protocol::gat1400::codec::local_time(c.event.occurred_at, &self.tz),
                    "SourceDeviceID": c.event.device_id,
                });
                ("DeviceList", "APEStatusObject", o, c.event.id.clone())
            } else {
                let Some(id) = c.object_id.clone() else {
                    out[i] = Some(Delivery::Rejected("no GA/T 1400 object id".into()));
                    continue;
                };
                let pictures = self.pictures(c).await?;
                let Some(o) = objects::object(&c.event, &id, &device, &self.tz, &pictures) else {
                    out[i] = Some(Delivery::Rejected("no GA/T 1400 object".into()));
                    continue;
                };
                match objects::collection(&c.event) {
                    Collection::Faces => ("FaceObjectList", "FaceObject", o, id),
                    _ => ("MotorVehicleObjectList", "MotorVehicleObject", o, id),
                }
            };
            for k in wanted {
                per_sub[k].push((i, list, key, object.clone(), info_id.clone()));
            }
        }
        // Per record: the worst outcome over the notifications that carried it.
        let mut worst: Vec<Option<Delivery>> = vec![None; batch.len()];
        let rank = |d: &Delivery| match d {
            Delivery::Delivered => 0,
            Delivery::Rejected(_) => 1,
            Delivery::Retry(_) => 2,
        };
        for (k, items) in per_sub.into_iter().enumerate() {
            let sub = &subs[k];
            let mut chunks: Vec<Vec<_>> = vec![Vec::new()];
            let mut size = 0usize;
            for item in items {
                let len = item.3.to_string().len();
                if size + len > MAX_REQUEST && chunks.last().is_some_and(|c| !c.is_empty()) {
                    chunks.push(Vec::new());
                    size = 0;
                }
                size += len;
                if let Some(c) = chunks.last_mut() {
                    c.push(item);
                }
            }
            for chunk in chunks.into_iter().filter(|c| !c.is_empty()) {
                let first = chunk.first().map(|x| batch[x.0].seq).unwrap_or_default();
                let mut lists: serde_json::Map<String, serde_json::Value> = serde_json::Map::new();
                let mut ids = Vec::with_capacity(chunk.len());
                let mut idx = Vec::with_capacity(chunk.len());
                for (i, list, key, o, id) in chunk {
                    let entry = lists.entry(list).or_insert_with(|| json!({ key: [] }));
                    if let Some(a) = entry.get_mut(key).and_then(serde_json::Value::as_array_mut) {
                        a.push(o);
                    }
                    ids.push(id);
                    idx.push(i);
                }
                // Named by the subscription and the first record, so a resend is the same
                // notification (the subscriber drops duplicates by it and by the InfoIDs).
                let mut n = json!({
                    "NotificationID": format!("{}{first:012}", sub.id.chars().take(40).collect::<String>()),
                    "SubscribeID": sub.id, "Title": sub.title,
                    "TriggerTime": crate::protocol::gat1400::codec::local_time(now, &self.tz),
                    "InfoIDs": ids.join(","),
                });
                if let Some(m) = n.as_object_mut() {
                    m.extend(lists);
                }
                let outcome =
                    match self.client.push_at(&sub.receive_addr, Collection::SubscribeNotifications, vec![n]).await {
                        Ok(mut o) => match o.pop() {
                            Some(Outcome::Delivered) => Delivery::Delivered,
                            Some(Outcome::Rejected(why)) => {
                                Delivery::Rejected(format!("subscription {}: {why}", sub.id).into())
                            }
                            Some(Outcome::Retry(why)) => Delivery::Retry(format!("subscription {}: {why}", sub.id)),
                            None => Delivery::Retry("no answer for the notification".into()),
                        },
                        Err(e) if e.retryable() => {
                            let what = format!("subscription {} at {}", sub.id, sub.receive_addr);
                            return Err(self.failed(e).during(&what));
                        }
                        Err(e) => Delivery::Rejected(format!("subscription {}: {e}", sub.id).into()),
                    };
                self.last_contact = Instant::now();
                for i in idx {
                    let replace = worst[i].as_ref().is_none_or(|w| rank(&outcome) > rank(w));
                    if replace {
                        worst[i] = Some(outcome.clone());
                    }
                }
            }
        }
        Ok(out
            .into_iter()
            .zip(worst)
            .map(|(o, w)| o.or(w).unwrap_or_else(|| Delivery::Retry("not sent".into())))
            .collect())
    }

    async fn ensure_registered(&mut self) -> Result<(), SinkError> {
        if !self.registered {
            self.client.register().await?;
            info!(user_id = %self.user_id, "Registered with the upper view library.");
            self.registered = true;
            self.last_contact = Instant::now();
        }
        Ok(())
    }

    fn failed(&mut self, e: Error) -> SinkError {
        if matches!(e, Error::Unauthorized(_)) {
            self.registered = false;
        }
        e.into()
    }
}

impl Sink for Gat1400 {
    async fn tick(&mut self) -> Result<bool, SinkError> {
        if !self.registered {
            // Register before there is anything to send, so the API shows the upstream's
            // state from the start; after a failure, no sooner than the backoff allows.
            if Instant::now() < self.retry_register_at {
                return Ok(false);
            }
            return match self.ensure_registered().await {
                Ok(()) => {
                    self.register_failures = 0;
                    Ok(true)
                }
                Err(e) => {
                    self.register_failures = self.register_failures.saturating_add(1);
                    self.retry_register_at =
                        Instant::now() + backoff(self.register_failures, REGISTER_MIN, REGISTER_MAX);
                    Err(e.during("registration"))
                }
            };
        }
        if self.last_contact.elapsed() >= KEEPALIVE {
            return match self.client.keepalive().await {
                Ok(()) => {
                    self.last_contact = Instant::now();
                    Ok(true)
                }
                Err(e) => {
                    // Any failed keepalive: register again before the next push.
                    self.registered = false;
                    Err(SinkError::from(e).during("keepalive"))
                }
            };
        }
        Ok(false)
    }

    async fn deliver(&mut self, batch: &[Claimed]) -> Result<Vec<Delivery>, SinkError> {
        if let Some((db, target)) = self.subscription.clone() {
            return self.notify(&db, &target, batch).await;
        }
        self.ensure_registered().await?;
        let mut out: Vec<Option<Delivery>> = vec![None; batch.len()];
        let mut groups: HashMap<Collection, Vec<(usize, serde_json::Value)>> = HashMap::new();
        for (i, c) in batch.iter().enumerate() {
            let coll = objects::collection(&c.event);
            let prefix = if coll.is_extension() { self.extension.as_deref() } else { Some("") };
            if prefix.is_none() {
                out[i] = Some(Delivery::Rejected(
                    format!(
                        "GA/T 1400 has no standard object for a {} record and this upstream has no extension path",
                        c.event.kind().as_str()
                    )
                    .into(),
                ));
                continue;
            }
            let pictures = self.pictures(c).await?;
            let device = self.device_of(c);
            let object = if coll.is_extension() {
                Some(objects::extension_object(&c.event, device, &self.user_id, &self.tz, &pictures))
            } else {
                c.object_id.as_deref().and_then(|id| objects::object(&c.event, id, device, &self.tz, &pictures))
            };
            match object {
                Some(o) => groups.entry(coll).or_default().push((i, o)),
                None => out[i] = Some(Delivery::Rejected("no GA/T 1400 object".into())),
            }
        }
        for (coll, items) in groups {
            // Requests are bounded by size (pictures travel inline): one list per chunk.
            let mut chunks: Vec<Vec<(usize, serde_json::Value)>> = vec![Vec::new()];
            let mut size = 0usize;
            for (i, o) in items {
                let len = o.to_string().len();
                if size + len > MAX_REQUEST && chunks.last().is_some_and(|c| !c.is_empty()) {
                    chunks.push(Vec::new());
                    size = 0;
                }
                size += len;
                if let Some(c) = chunks.last_mut() {
                    c.push((i, o));
                }
            }
            for chunk in chunks.into_iter().filter(|c| !c.is_empty()) {
                // A single object's text is kept in case the upstream refuses it as too large.
                let single = (chunk.len() == 1).then(|| elided(&chunk[0].1));
                let (idx, objs): (Vec<usize>, Vec<serde_json::Value>) = chunk.into_iter().unzip();
                let path = match (&self.extension, coll.is_extension()) {
                    (Some(prefix), true) => format!("{prefix}{}", coll.path()),
                    _ => coll.path().to_owned(),
                };
                let answered = match self.client.push_answered(&path, coll, objs).await {
                    Ok(a) => a,
                    // One object the upstream finds too large on its own will never pass:
                    // park it rather than stall every record behind it.
                    Err(Error::Status { status: 413, body }) if single.is_some() => {
                        let refusal = Refusal {
                            reason: "the upstream refuses the object as too large (413)".into(),
                            request: single,
                            response: Some(format!("HTTP 413 {body}")),
                        };
                        out[idx[0]] = Some(Delivery::Rejected(refusal));
                        self.last_contact = Instant::now();
                        continue;
                    }
                    Err(e) => return Err(self.failed(e)),
                };
                self.last_contact = Instant::now();
                for (i, a) in idx.into_iter().zip(answered) {
                    out[i] = Some(match a.outcome {
                        Outcome::Delivered => Delivery::Delivered,
                        Outcome::Retry(why) => Delivery::Retry(why),
                        Outcome::Rejected(why) => Delivery::Rejected(Refusal {
                            reason: why,
                            request: Some(format!("POST {path} {}", elided(&a.object))),
                            response: a.answer.map(|e| e.to_string()),
                        }),
                    });
                }
            }
        }
        Ok(out.into_iter().map(|o| o.unwrap_or_else(|| Delivery::Retry("not sent".into()))).collect())
    }
}

/// Longest string kept as it is in a dead record's request; longer ones (inline pictures) are
/// replaced by their length.
const KEEP_STRING: usize = 256;

/// `object` as JSON text with long strings elided, for a dead record's request.
fn elided(object: &serde_json::Value) -> String {
    fn walk(v: &serde_json::Value) -> serde_json::Value {
        use serde_json::Value;
        match v {
            Value::String(s) if s.len() > KEEP_STRING => Value::String(format!("<{} bytes elided>", s.len())),
            Value::Array(a) => Value::Array(a.iter().map(walk).collect()),
            Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), walk(v))).collect()),
            other => other.clone(),
        }
    }
    walk(object).to_string()
}
