//! MANSCDP bodies devices send (in MESSAGE, or NOTIFY for subscriptions): keepalives
//! (evidence for presence), answers to vigil's queries (catalog, device info, device status,
//! BasicParam keepalive settings) and alarms (an `alarm` event, answered 200 only once it is
//! committed, then a `Response/Alarm`). Answers are taken only from the address the device
//! registered from, and only for queries vigil sent.

use std::net::SocketAddr;

use tracing::{debug, info, warn};

use super::super::catalog::Assembled;
use super::{text_attrs, Internal, Reply, Server};
use crate::clock::Millis;
use crate::event::{AlarmBody, Event, EventBody, Evidence, Observation};
use crate::protocol::manscdp;
use crate::protocol::sip::message::{self, uri_user, Message};
use crate::protocol::sip::transactions::Purpose;
use crate::registry::Channel;

/// Bounds on a keepalive interval a device reports (s), and on the misses (count).
const LEARNED_INTERVAL_S: (u64, u64) = (5, 3600);
const LEARNED_COUNT: (u64, u64) = (1, 10);

impl Server {
    fn answer(&self, msg: &Message<'_>, from: SocketAddr, code: u16, reason: &str) -> Vec<u8> {
        message::response(msg, code, reason, from, &self.tag, &[], b"")
    }

    /// Handles a MESSAGE or NOTIFY. Returns the answer (None: it is sent later, once a write
    /// commits) and whether handling the request again would change nothing.
    pub(super) async fn message(
        &mut self,
        msg: &Message<'_>,
        from: SocketAddr,
        now: Millis,
        reply: &Reply,
    ) -> (Option<Vec<u8>>, bool) {
        let Some(id) = msg.header("From").and_then(uri_user).map(str::to_owned) else {
            self.reject("no_device_id", from, "no device id in From".into());
            return (Some(self.answer(msg, from, 400, "Bad Request (no device id in From)")), true);
        };
        let declared = manscdp::declared(msg.body);
        let (text, decoded_as) = manscdp::decode(msg.body);
        let env = match manscdp::envelope(&text) {
            Ok(e) => e,
            Err(e) => {
                self.reject(e.reason(), from, e.to_string());
                if let Some(held) = self.hush_malformed.tick(now) {
                    warn!(device = %id, peer = %from, error = %e, held_back = held, "MANSCDP body refused.");
                }
                return (Some(self.answer(msg, from, 400, "Bad Request (MANSCDP body)")), true);
            }
        };
        let Some(device) = self.registry.read().device(&id) else {
            self.reject("unknown_device", from, format!("MESSAGE from {id}, which is not in the registry"));
            return (Some(self.answer(msg, from, 403, "Forbidden (not registered)")), true);
        };
        let registered_here =
            self.sessions.get(&id).is_some_and(|s| s.info.source.ip() == from.ip() && s.info.expires_at > now);
        // Remember the charset the device writes in, to answer in it.
        if registered_here && self.cfg.charset == crate::config::SipCharset::Auto {
            let cs = declared.unwrap_or(decoded_as);
            if let Some(s) = self.sessions.get_mut(&id).filter(|s| s.charset() != cs) {
                s.info.charset = cs.xml_name().into();
                self.board.put(&id, s.info.clone());
                self.board_dirty = true;
            }
        }
        // What writes to the registry or the event log (answers, catalog notifies, alarms) is
        // taken only from the address the device registered from: MESSAGE carries no
        // credentials, and a forged From must not rewrite a device's channels.
        let keepalive = env.root == "Notify" && env.cmd_type == "Keepalive";
        // A keepalive is evidence of presence: while the device has a live registration it is
        // believed only from the address it registered from (a forged keepalive must not
        // keep a dead camera online). A device that moved re-registers (a 403 tells it to).
        let registered_elsewhere = self.sessions.get(&id).is_some_and(|s| s.info.expires_at > now) && !registered_here;
        if keepalive && registered_elsewhere {
            self.reject(
                "not_from_registered_address",
                from,
                format!("Keepalive for {id} from an address it did not register from"),
            );
            return (Some(self.answer(msg, from, 403, "Forbidden (not registered from this address)")), true);
        }
        let writes = !keepalive;
        if writes && !registered_here {
            self.reject(
                "not_from_registered_address",
                from,
                format!("{}/{} for {id} from an address it did not register from", env.root, env.cmd_type),
            );
            return (Some(self.answer(msg, from, 403, "Forbidden (not registered from this address)")), true);
        }
        if env.root == "Response" {
            let cmd = match env.cmd_type.as_str() {
                "Catalog" => "Catalog",
                "DeviceInfo" => "DeviceInfo",
                "DeviceStatus" => "DeviceStatus",
                "ConfigDownload" => "ConfigDownload",
                _ => "",
            };
            let asked = self.sessions.get(&id).is_some_and(|s| s.was_asked(env.sn, cmd, now));
            if !asked {
                // Acknowledged (so the device stops sending it) but not believed.
                self.reject(
                    "unsolicited_response",
                    from,
                    format!("Response/{} SN {:?} answers no query vigil sent", env.cmd_type, env.sn),
                );
                return (Some(self.answer(msg, from, 200, "OK")), true);
            }
        }
        let ok = (Some(self.answer(msg, from, 200, "OK")), true);
        match (env.root.as_str(), env.cmd_type.as_str()) {
            ("Notify", "Keepalive") => {
                let registered = self.sessions.get(&id).is_some_and(|s| s.info.expires_at > now);
                if !registered {
                    debug!(device = %id, "Keepalive from a device with no live registration; presence judges it.");
                } else {
                    self.board.update(&id, |s| s.last_keepalive = Some(now));
                    if let Some(s) = self.sessions.get_mut(&id) {
                        s.info.last_keepalive = Some(now);
                    }
                }
                let obs = Observation {
                    device: device.key,
                    at: now,
                    evidence: Evidence::SipKeepalive { window_ms: self.window_ms(&id) },
                    detail: None,
                };
                if self.presence.observe(obs).await.is_err() {
                    return (Some(self.answer(msg, from, 503, "Service Unavailable")), true);
                }
                ok
            }
            ("Response", "DeviceInfo") => match manscdp::device_info(&text) {
                Ok(info) => {
                    let mut attrs = text_attrs([
                        ("device_name", info.device_name),
                        ("manufacturer", info.manufacturer),
                        ("model", info.model),
                        ("firmware", info.firmware),
                    ]);
                    if let Some(n) = info.channels {
                        attrs.insert("channel_count".into(), serde_json::json!(n));
                    }
                    self.merge_attrs(id, attrs);
                    ok
                }
                Err(e) => self.bad_body(msg, from, e, "DeviceInfo"),
            },
            ("Response", "DeviceStatus") => match manscdp::device_status(&text) {
                Ok(st) => {
                    let alarms: serde_json::Map<String, serde_json::Value> =
                        st.alarms.into_iter().map(|(k, v)| (k, serde_json::Value::String(v))).collect();
                    let mut attrs = serde_json::Map::new();
                    attrs.insert(
                        "device_status".into(),
                        serde_json::json!({
                            "online": st.online, "status": st.status, "encode": st.encode,
                            "record": st.record, "device_time": st.device_time,
                            "alarm_inputs": alarms,
                        }),
                    );
                    if st.status == "ERROR" {
                        info!(device = %id, "Device reports its own status as ERROR.");
                    }
                    self.merge_attrs(id, attrs);
                    ok
                }
                Err(e) => self.bad_body(msg, from, e, "DeviceStatus"),
            },
            ("Response", "ConfigDownload") => match manscdp::basic_param(&text) {
                Ok(Some(p)) => {
                    self.learn_keepalive(&id, &p, now);
                    ok
                }
                Ok(None) => ok,
                Err(e) => self.bad_body(msg, from, e, "ConfigDownload"),
            },
            ("Response", "Catalog") | ("Notify", "Catalog") => match manscdp::catalog(&text) {
                Ok(part) => {
                    if env.root == "Notify" && part.items.iter().any(|i| !i.event.is_empty()) {
                        let Ok(permit) = self.writes_in_flight.clone().try_acquire_owned() else {
                            return (Some(self.busy(msg, from)), true);
                        };
                        self.catalog_changes(&id, part.items, permit);
                    } else if let Some(done) = self.catalogs.add(&id, part, now) {
                        self.store_catalog(done);
                    }
                    ok
                }
                Err(e) => self.bad_body(msg, from, e, "Catalog"),
            },
            ("Notify", "Alarm") => match manscdp::alarm(&text) {
                Ok(a) => match self.writes_in_flight.clone().try_acquire_owned() {
                    Ok(permit) => (self.alarm(msg, from, now, reply, &id, device.org_id.clone(), a, permit), true),
                    Err(_) => (Some(self.busy(msg, from)), true),
                },
                Err(e) => self.bad_body(msg, from, e, "Alarm"),
            },
            (root, cmd) => {
                self.reject("unhandled_manscdp", from, format!("{root}/{cmd} is not handled"));
                debug!(device = %id, root, cmd, "MANSCDP message not handled; answered 200.");
                ok
            }
        }
    }

    /// 503 with Retry-After: too many of this kind of write in flight; the device sends again.
    fn busy(&self, msg: &Message<'_>, from: SocketAddr) -> Vec<u8> {
        self.reject("busy", from, format!("more than {} writes in flight", super::WRITES_IN_FLIGHT));
        message::response(msg, 503, "Service Unavailable", from, &self.tag, &[("Retry-After", "5".into())], b"")
    }

    fn bad_body(&self, msg: &Message<'_>, from: SocketAddr, e: manscdp::Error, what: &str) -> (Option<Vec<u8>>, bool) {
        self.reject(e.reason(), from, format!("{what}: {e}"));
        (Some(self.answer(msg, from, 400, &format!("Bad Request ({what} body)"))), true)
    }

    /// Queues learned attributes; they are written in one transaction a second (and only
    /// where they changed), so a storm of answers is not a storm of commits.
    pub(super) fn merge_attrs(&mut self, id: String, attrs: serde_json::Map<String, serde_json::Value>) {
        if self.pending_attrs.len() >= super::PENDING_ATTRS_MAX && !self.pending_attrs.contains_key(&id) {
            self.metrics.events_rejected.with_label_values(&["gb28181", "attrs_backlog_full"]).inc();
            return;
        }
        self.pending_attrs.entry(id).or_default().extend(attrs);
    }

    /// Adopts the keepalive settings a device reports, clamped to sane bounds (a bad value
    /// there caused mass false-offline in WVP), and records what was used and why.
    fn learn_keepalive(&mut self, id: &str, p: &manscdp::BasicParam, _now: Millis) {
        let Some(reported) = p.heartbeat_interval else { return };
        let interval = reported.clamp(LEARNED_INTERVAL_S.0, LEARNED_INTERVAL_S.1);
        let count_reported = p.heartbeat_count.unwrap_or(u64::from(self.cfg.keepalive_misses));
        let count = count_reported.clamp(LEARNED_COUNT.0, LEARNED_COUNT.1);
        let window = (interval * count * 1000) as Millis;
        let clamped = interval != reported || count != count_reported;
        let from = format!(
            "device: HeartBeatInterval {reported} s × HeartBeatCount {count_reported}{}",
            if clamped { format!(" (clamped to {interval} s × {count})") } else { String::new() }
        );
        if let Some(s) = self.sessions.get_mut(id) {
            if s.info.keepalive_window_ms != window || s.info.keepalive_from != from {
                info!(device = %id, interval_s = interval, count, clamped, "Keepalive window learned from the device.");
                s.info.keepalive_window_ms = window;
                s.info.keepalive_from = from;
                self.board.put(id, s.info.clone());
                self.board_dirty = true;
            }
        }
        let mut attrs = serde_json::Map::new();
        attrs.insert(
            "keepalive".into(),
            serde_json::json!({
                "interval_s": interval, "misses": count, "window_s": window / 1000,
                "reported_interval_s": reported, "reported_count": p.heartbeat_count,
                "reported_expiration_s": p.expiration, "clamped": clamped,
            }),
        );
        self.merge_attrs(id.to_owned(), attrs);
    }

    /// Applies a catalog subscription notify: per item `ON`/`OFF`/`VLOST`/`DEFECT` change
    /// the channel's status, `ADD`/`UPDATE` add or update it, `DEL` removes it.
    fn catalog_changes(
        &mut self,
        id: &str,
        items: Vec<manscdp::CatalogItem>,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        let mut upserts = Vec::new();
        let mut removes = Vec::new();
        for i in items {
            match i.event.as_str() {
                "DEL" => removes.push(i.device_id),
                ev => {
                    let status_on = match ev {
                        "ON" => true,
                        "OFF" | "VLOST" | "DEFECT" => false,
                        _ => i.status_on,
                    };
                    upserts.push(Channel {
                        id: i.device_id.clone(),
                        name: i.name.clone(),
                        status_on,
                        attrs: item_attrs(&i),
                    });
                }
            }
        }
        let registry = self.registry.clone();
        let id = id.to_owned();
        tokio::spawn(async move {
            let _permit = permit;
            let (n_up, n_del) = (upserts.len(), removes.len());
            match registry.patch_channels(&id, upserts, &removes).await {
                Ok(()) => info!(device = %id, changed = n_up, removed = n_del, "Catalog change notified and stored."),
                Err(e) => warn!(device = %id, error = %e, "Cannot store a catalog change."),
            }
        });
    }

    /// Stores an assembled catalog in the background: a complete one replaces the channel
    /// list, a partial one only adds and updates.
    pub(super) fn store_catalog(&self, done: Assembled) {
        let n = done.items.len();
        let channels: Vec<Channel> = done
            .items
            .iter()
            .filter(|i| i.device_id != done.device_id)
            .map(|i| Channel {
                id: i.device_id.clone(),
                name: i.name.clone(),
                status_on: i.status_on,
                attrs: item_attrs(i),
            })
            .collect();
        let registry = self.registry.clone();
        tokio::spawn(async move {
            let stored = if done.complete {
                registry.replace_channels(&done.device_id, channels).await
            } else {
                registry.merge_channels(&done.device_id, channels).await
            };
            match stored {
                Ok(()) => info!(device = %done.device_id, items = n, complete = done.complete, "Catalog stored."),
                Err(e) => warn!(device = %done.device_id, error = %e, "Cannot store a catalog."),
            }
        });
    }

    /// An alarm: made an event and submitted; the 200 (and the `Response/Alarm`) go out once
    /// it is committed, a 500 if it cannot be (the device sends it again).
    #[allow(clippy::too_many_arguments)]
    fn alarm(
        &mut self,
        msg: &Message<'_>,
        from: SocketAddr,
        now: Millis,
        reply: &Reply,
        id: &str,
        org_id: Option<String>,
        a: manscdp::Alarm,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Option<Vec<u8>> {
        let device_time = chrono::NaiveDateTime::parse_from_str(a.time.trim(), "%Y-%m-%dT%H:%M:%S%.f")
            .or_else(|_| chrono::NaiveDateTime::parse_from_str(a.time.trim(), "%Y-%m-%d %H:%M:%S"))
            .ok()
            .and_then(|t| t.and_local_timezone(self.tz).earliest())
            .map(|t| t.timestamp_millis());
        let (occurred_at, time_source) = crate::event::judge_time(device_time, now);
        let source_id = if a.device_id.is_empty() { id.to_owned() } else { a.device_id.clone() };
        let event = Event {
            id: Event::new_id(),
            dedup_key: format!("gb28181:{id}:alarm:{source_id}:{}:{}", a.sn.unwrap_or(0), a.time),
            source: "gb28181".into(),
            device_id: id.to_owned(),
            org_id,
            occurred_at,
            occurred_at_raw: (!a.time.is_empty()).then(|| a.time.clone()),
            time_source,
            received_at: now,
            seq: a.sn.and_then(|s| i64::try_from(s).ok()),
            offline_replay: false,
            profile: None,
            media: Vec::new(),
            body: EventBody::Alarm(AlarmBody {
                source_id,
                priority: a.priority,
                method: a.method,
                alarm_type: a.alarm_type,
                description: a.description.clone(),
                longitude: a.longitude,
                latitude: a.latitude,
                ..AlarmBody::default()
            }),
        };
        let ok = self.answer(msg, from, 200, "OK");
        let failed =
            message::response(msg, 500, "Server Internal Error", from, &self.tag, &[("Retry-After", "5".into())], b"");
        let events = self.events.clone();
        let done = self.internal_tx.clone();
        let reply = reply.clone();
        let device = id.to_owned();
        let sn = a.sn.unwrap_or(0);
        tokio::spawn(async move {
            let _permit = permit;
            match events.submit(event).await {
                Ok(stored) => {
                    info!(device = %device, sn, duplicate = matches!(stored, crate::events::Stored::Duplicate), "Alarm stored.");
                    let _ = done.send(Internal::Answer { bytes: ok, to: from, reply }).await;
                    if matches!(stored, crate::events::Stored::New) {
                        let _ = done.send(Internal::Request { device, purpose: Purpose::AlarmResponse(sn) }).await;
                    }
                }
                Err(e) => {
                    warn!(device = %device, sn, error = %e, "Alarm not stored; answered 500 so the device sends it again.");
                    let _ = done.send(Internal::Answer { bytes: failed, to: from, reply }).await;
                }
            }
        });
        None
    }
}

/// A catalog item's attributes worth keeping.
fn item_attrs(i: &manscdp::CatalogItem) -> serde_json::Map<String, serde_json::Value> {
    text_attrs([
        ("manufacturer", i.manufacturer.clone()),
        ("model", i.model.clone()),
        ("parent_id", i.parent_id.clone()),
        ("civil_code", i.civil_code.clone()),
        ("address", i.address.clone()),
        ("longitude", i.longitude.clone()),
        ("latitude", i.latitude.clone()),
    ])
}
