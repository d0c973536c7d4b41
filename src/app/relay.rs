//! The relay's start: which upstream takes which record (routes, committed with the events as
//! delivery rows), one sink per `[[upstreams]]` entry, and a runner per sink that delivers
//! from the outbox.

use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::Error;
use crate::config::Config;
use crate::db::Db;
use crate::outbox::runner::{self, TargetStatus};

/// A configured upstream's sink.
pub enum Upstream {
    Gat1400(Box<crate::sinks::gat1400::Gat1400>),
    Link(Box<crate::link::sink::Link>),
    /// GB/T 28181 cascade: a session with the upper platform (its user agent), and the
    /// outbox's alarms to it when it takes them.
    Cascade(Box<crate::sinks::cascade::Cascade>, Option<Box<crate::sinks::cascade::alarm::AlarmSink>>),
}

impl Upstream {
    fn protocol(&self) -> &'static str {
        match self {
            Upstream::Gat1400(_) => "gat1400",
            Upstream::Link(_) => "quic",
            Upstream::Cascade(..) => "gb28181",
        }
    }
}

/// This gateway's certificates for the QUIC link, from `[quic]`.
pub fn link_identity(config: &Config) -> Result<crate::link::tls::Identity, Error> {
    let q = &config.quic;
    crate::link::tls::Identity::load(q.cert.as_ref(), q.key.as_ref(), q.ca.as_ref())
        .map_err(|e| Error::Config(format!("quic: {e}")))
}

/// The relay's routes and sinks from `[[upstreams]]`. GA/T 1400 upstreams take the kinds it
/// has standard objects for (the others through the extension path, where configured); a
/// GB/T 28181 upstream takes no records: its user agent registers and keeps alive.
pub fn relay_plan(
    config: &Config,
    media: &crate::images::ImageStore,
    streams: &crate::media::StreamBoard,
    given: Option<&Arc<crate::sinks::cascade::ids::Ids>>,
    db: &Db,
) -> Result<(crate::events::Relay, Vec<(String, Upstream)>), Error> {
    use crate::event::EventKind;
    let tz = config.timezone();
    let mut relay = crate::events::Relay::none(&config.gateway.id, tz);
    let mut routes = Vec::new();
    let mut sinks = Vec::new();
    for u in &config.upstreams {
        let wanted: Vec<EventKind> = if u.events.is_empty() { EventKind::ALL.to_vec() } else { u.events.clone() };
        if u.protocol == Some(crate::config::UpstreamProtocol::Quic) {
            // A hub takes every kind: it relays them on by its own routes.
            let link = crate::link::sink::Link::new(
                &u.url,
                &u.server_name,
                link_identity(config)?,
                &config.gateway.id,
                &config.gateway.name,
                media.clone(),
            )
            .map_err(|e| Error::Config(format!("upstreams {}: {e}", u.name)))?;
            routes.push((u.name.clone(), wanted));
            sinks.push((u.name.clone(), Upstream::Link(Box::new(link))));
            continue;
        }
        if u.protocol == Some(crate::config::UpstreamProtocol::Gb28181) {
            let mut c = crate::sinks::cascade::Cascade::new(u, &config.gateway.id)
                .map_err(|e| Error::Config(format!("upstreams {}: {e}", u.name)))?;
            // The upper's INVITEs play from the board; a GB/T 28181 channel not yet pulled
            // gets its INVITE and first picture's time to give a keyframe.
            c.set_media(streams.clone(), config.gb28181.invite_timeout + config.gb28181.media_timeout);
            // Alarms go up as Notify/Alarm, through the outbox; other kinds have no GB/T 28181 form.
            let alarms = wanted.contains(&EventKind::Alarm).then(|| Box::new(c.alarm_sink(tz, given.cloned())));
            if alarms.is_some() {
                routes.push((u.name.clone(), vec![EventKind::Alarm]));
            }
            sinks.push((u.name.clone(), Upstream::Cascade(Box::new(c), alarms)));
            continue;
        }
        if u.protocol != Some(crate::config::UpstreamProtocol::Gat1400) {
            warn!(upstream = %u.name, protocol = ?u.protocol, "Relaying over this protocol is not built yet; the upstream is ignored.");
            continue;
        }
        let subscription = u.mode == crate::config::RelayMode::Subscription;
        let kinds: Vec<EventKind> = wanted
            .iter()
            .copied()
            .filter(|k| {
                if subscription {
                    // What subscriptions have categories for: faces, vehicles, device status.
                    crate::outbox::subscriptions::category(*k).is_some()
                } else {
                    crate::sinks::gat1400::KINDS.contains(k)
                        || !u.extension.is_empty() && crate::sinks::gat1400::EXTENSION_KINDS.contains(k)
                }
            })
            .collect();
        let left: Vec<&str> = u.events.iter().filter(|k| !kinds.contains(k)).map(|k| k.as_str()).collect();
        if !left.is_empty() {
            warn!(upstream = %u.name, kinds = ?left, "GA/T 1400 has no standard object for these kinds; set `extension` on this upstream (the district's interface document names the path) to relay them.");
        }
        let mut sink =
            crate::sinks::gat1400::Gat1400::new(&u.url, &u.user_id, &u.password, media.clone(), tz, &u.extension)
                .map_err(|e| Error::Config(format!("upstreams {}: {e}", u.name)))?;
        if subscription {
            sink = sink.subscription_mode(db.clone(), &u.name);
            info!(upstream = %u.name, "Subscription mode: records wait for the upper view library's subscriptions at /VIID/Subscribes.");
        }
        routes.push((u.name.clone(), kinds));
        sinks.push((u.name.clone(), Upstream::Gat1400(Box::new(sink))));
    }
    relay.routes = Arc::new(crate::outbox::Routes(routes));
    Ok((relay, sinks))
}

/// The channels a GB/T 28181 upper platform sees within its scope (orgs with their sub-orgs,
/// kinds): every enabled, approved GB/T 28181 device's catalog channels (an IPC without
/// channels as itself), ON while the device is online and the channel's own status is ON;
/// devices of other protocols whose ids are 20-digit GB/T 28181 codes as themselves. (Ids
/// allocated for the others are the cascade's next part.)
pub fn cascade_catalog(
    registry: crate::registry::Registry,
    presence: crate::presence::runner::PresenceHandle,
    ids: Option<Arc<crate::sinks::cascade::ids::Ids>>,
    streams: crate::media::StreamBoard,
) -> crate::sinks::cascade::Catalog {
    use crate::sinks::cascade::catalog::{Item, OrgNode, Video};
    use crate::sinks::cascade::ids::{
        Wanted, TYPE_ALARM_INPUT, TYPE_CAMERA, TYPE_GROUP, TYPE_PERIPHERAL, TYPE_VIRTUAL_ORG,
    };
    let version = {
        let (registry, presence, streams) = (registry.clone(), presence.clone(), streams.clone());
        Arc::new(move || {
            let (registry, presence, streams) = (registry.clone(), presence.clone(), streams.clone());
            Box::pin(async move {
                use std::hash::{Hash, Hasher};
                let states = presence.states().await.unwrap_or_default();
                let mut h = std::collections::hash_map::DefaultHasher::new();
                registry.read().generation().hash(&mut h);
                states.hash(&mut h);
                streams.faults_digest().hash(&mut h);
                h.finish()
            }) as std::pin::Pin<Box<dyn std::future::Future<Output = u64> + Send>>
        })
    };
    let build = Arc::new(move |scope: crate::sinks::cascade::Scope| {
        let (registry, presence, ids, streams) = (registry.clone(), presence.clone(), ids.clone(), streams.clone());
        Box::pin(async move {
            let states = presence.states().await.unwrap_or_default();
            let mut items = Vec::new();
            // Devices without a GB/T 28181 id of their own, whose id vigil gives: (item with
            // the device's id for now, the org's division prefix).
            let mut unnamed: Vec<(Item, Option<String>, &'static str)> = Vec::new();
            let mut orgs: std::collections::HashMap<String, OrgNode> = std::collections::HashMap::new();
            {
                let cache = registry.read();
                let in_scope = |d: &crate::registry::Device| {
                    (scope.kinds.is_empty() || scope.kinds.contains(&d.kind))
                        && (scope.orgs.is_empty()
                            || d.org_id
                                .as_deref()
                                .is_some_and(|o| scope.orgs.iter().any(|root| cache.is_in_subtree(o, root))))
                };
                for d in cache.devices().filter(|d| d.counted(true) && in_scope(d)) {
                    let online = states.get(d.key as usize).copied() == Some(1);
                    let attr = |k: &str| d.attrs.get(k).and_then(|v| v.as_str()).unwrap_or("").to_owned();
                    let (manufacturer, model) = (attr("manufacturer"), attr("model"));
                    let channels = cache.channels(&d.id).filter(|c| !c.is_empty());
                    let gb_coded = crate::ids::GbCode::parse(&d.id).is_ok();
                    let video = match d.protocol {
                        crate::domain::Protocol::Gb28181 => {
                            Some(Video::Gb { device: d.id.clone(), channel: d.id.clone() })
                        }
                        crate::domain::Protocol::Rtsp => Some(Video::Pulled(d.id.clone())),
                        _ => None,
                    };
                    match channels {
                        Some(chs) if d.protocol == crate::domain::Protocol::Gb28181 => {
                            for c in chs.iter() {
                                let video = Some(Video::Gb { device: d.id.clone(), channel: c.id.clone() });
                                let on = online && c.status_on;
                                let mut i = Item::channel(c.id.clone(), c.name.clone(), on, video, d.org_id.clone());
                                (i.manufacturer, i.model) = (manufacturer.clone(), model.clone());
                                items.push(i);
                            }
                        }
                        // A camera without channels is its own channel; an RTSP camera is
                        // pulled always, under its own id.
                        _ if d.protocol == crate::domain::Protocol::Gb28181 || gb_coded => {
                            let mut i = Item::channel(d.id.clone(), d.name.clone(), online, video, d.org_id.clone());
                            (i.manufacturer, i.model) = (manufacturer, model);
                            items.push(i);
                        }
                        // RTSP cameras and GA/T 1400 checkpoints without a GB/T 28181 id (and
                        // community devices, where the upper takes them): one is given to them.
                        _ if ids.is_some()
                            && (matches!(
                                d.protocol,
                                crate::domain::Protocol::Rtsp | crate::domain::Protocol::Gat1400
                            ) || (scope.community && d.protocol == crate::domain::Protocol::Mqtt)) =>
                        {
                            use crate::domain::DeviceKind as K;
                            let type_code = match d.kind {
                                K::Camera | K::Nvr | K::VehicleCheckpoint | K::FaceCheckpoint => TYPE_CAMERA,
                                K::Sensor => TYPE_ALARM_INPUT,
                                _ => TYPE_PERIPHERAL,
                            };
                            let prefix =
                                d.org_id.as_deref().and_then(|o| cache.org(o)).and_then(|o| o.gb_prefix.clone());
                            let mut item = Item::channel(d.id.clone(), d.name.clone(), online, video, d.org_id.clone());
                            (item.manufacturer, item.model) = (manufacturer, model);
                            unnamed.push((item, prefix, type_code));
                        }
                        _ => {}
                    }
                }
                if scope.tree != crate::config::CatalogTree::Flat {
                    for o in cache.orgs() {
                        let node = OrgNode {
                            id: o.id.clone(),
                            name: o.name.clone(),
                            parent: o.parent_id.clone(),
                            prefix: o.gb_prefix.clone(),
                            gb_id: None,
                        };
                        orgs.insert(o.id.clone(), node);
                    }
                }
            }
            // In the `groups` tree every org is a node with a 20-digit id of its own (215 for a
            // root, 216 below), given like a device's.
            let org_key = |id: &str| format!("org:{id}");
            let groups = scope.tree == crate::config::CatalogTree::Groups;
            if let Some(ids) = ids.as_ref().filter(|_| groups || !unnamed.is_empty()) {
                let mut wanted = unnamed
                    .iter()
                    .filter(|(i, _, _)| ids.get(&i.id).is_none())
                    .map(|(i, p, t)| Wanted { device_id: i.id.clone(), prefix: p.clone(), type_code: t })
                    .collect::<Vec<_>>();
                if groups {
                    for o in orgs.values().filter(|o| ids.get(&org_key(&o.id)).is_none()) {
                        let type_code = if o.parent.is_some() { TYPE_VIRTUAL_ORG } else { TYPE_GROUP };
                        wanted.push(Wanted { device_id: org_key(&o.id), prefix: o.prefix.clone(), type_code });
                    }
                }
                if !wanted.is_empty() {
                    let taken = |id: &str| registry.read().device(id).is_some();
                    if let Err(e) = ids.allocate(wanted, taken).await {
                        warn!(error = %e, "Cannot store GB/T 28181 ids for devices without one; they stay out of the catalog for now.");
                    }
                }
                for (mut item, _, _) in unnamed {
                    if let Some(id) = ids.get(&item.id) {
                        item.id = id;
                        items.push(item);
                    }
                }
                if groups {
                    for o in orgs.values_mut() {
                        o.gb_id = ids.get(&org_key(&o.id));
                    }
                }
            }
            // What is wrong with a pulled picture (stalled: VLOST; diagnosis alarm: DEFECT).
            for i in items.iter_mut().filter(|i| i.on) {
                i.fault = match &i.video {
                    Some(Video::Pulled(key)) => streams.fault(key),
                    Some(Video::Gb { device, channel }) => streams.fault(&crate::media::channel_key(device, channel)),
                    None => None,
                };
            }
            crate::sinks::cascade::catalog::arrange(items, &orgs, scope.tree)
        }) as std::pin::Pin<Box<dyn std::future::Future<Output = Vec<Item>> + Send>>
    });
    crate::sinks::cascade::Catalog::new(build, version)
}

/// Starts a runner per upstream; answers their status, in config order, for the API.
pub fn spawn_runners(
    sinks: Vec<(String, Upstream)>,
    catalog: crate::sinks::cascade::Catalog,
    ctx: impl Fn() -> runner::Context,
    cancel: &CancellationToken,
    tracker: &TaskTracker,
) -> Vec<Arc<Mutex<TargetStatus>>> {
    let mut targets = Vec::new();
    for (name, sink) in sinks {
        let status = Arc::new(Mutex::new(TargetStatus {
            name: name.clone(),
            protocol: sink.protocol().into(),
            ..Default::default()
        }));
        targets.push(status.clone());
        match sink {
            Upstream::Gat1400(s) => tracker.spawn(runner::run(ctx(), *s, status, cancel.child_token())),
            Upstream::Link(s) => tracker.spawn(runner::run(ctx(), *s, status, cancel.child_token())),
            Upstream::Cascade(c, alarms) => {
                if let Some(a) = alarms {
                    tracker.spawn(runner::run(ctx(), *a, status.clone(), cancel.child_token()));
                }
                let metrics = ctx().metrics;
                tracker.spawn(crate::sinks::cascade::run(*c, catalog.clone(), status, metrics, cancel.child_token()))
            }
        };
        info!(upstream = %name, "Relaying to this upstream.");
    }
    targets
}
