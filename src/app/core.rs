//! The core's start: the registry (loaded, the config's orgs and RTSP cameras seeded), the
//! presence table restored from the last checkpoint, and the expiry of quarantined devices.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Error;
use crate::clock::now_ms;
use crate::config::Config;
use crate::db::Db;
use crate::presence::{self, PresenceTable, Transition};
use crate::registry::{Admission, NewDevice, Org, Protocol, Registry};
use crate::telemetry::Metrics;

/// The registry, with the orgs and RTSP cameras of the config written into it.
pub async fn open_registry(db: &Db, config: &Config) -> Result<Registry, Error> {
    let registry = Registry::load(db.clone(), config.admission.clone()).await?;
    let orgs: Vec<Org> = config.orgs.iter().map(Org::from_seed).collect();
    registry.seed_orgs(&orgs).await?;
    if !config.rtsp.cameras.is_empty() {
        let cams: Vec<NewDevice> = config
            .rtsp
            .cameras
            .iter()
            .map(|c| NewDevice {
                id: c.id.clone(),
                name: c.name.clone(),
                kind: c.kind,
                protocol: Protocol::Rtsp,
                org_id: c.org.clone(),
                profile: None,
                rtsp_url: Some(c.url.clone()),
                password: None,
                admission: Admission::Approved,
                attrs: Default::default(),
            })
            .map(|d| registry.prepare_device(d))
            .collect::<Result<_, _>>()?;
        registry.upsert_devices(cams, |_| {}).await?;
    }
    let (orgs, devices) = {
        let c = registry.read();
        (c.org_count(), c.device_count())
    };
    info!(orgs, devices, "Registry loaded.");
    Ok(registry)
}

/// Every device tracked, then what was persisted restored: devices whose validity window is
/// still open stay online, the rest are unknown until fresh evidence. Answers the table and
/// the restore's transitions (the gap), which the presence writer records in the background.
pub async fn restore_presence(db: &Db, registry: &Registry) -> Result<(PresenceTable, Vec<Transition>), Error> {
    let now = now_ms();
    let mut table = PresenceTable::new();
    {
        let cache = registry.read();
        for d in cache.devices() {
            table.track(d.key, Arc::from(d.id.as_str()), d.protocol.as_str(), now);
        }
    }
    let rows = presence::store::load_states(db).await.map_err(Error::Presence)?;
    let last = presence::store::last_checkpoint(&db.pool).await.map_err(Error::Presence)?;
    let down_since = last.unwrap_or(now);
    let keyed: Vec<(u32, presence::StateRow)> = {
        let cache = registry.read();
        rows.into_iter().filter_map(|row| cache.device(&row.device_id).map(|d| (d.key, row))).collect()
    };
    let restored = table.restore(&keyed, down_since, now);
    let back_online = restored.iter().filter(|t| t.to == presence::State::Online).count();
    if !keyed.is_empty() {
        info!(
            devices = keyed.len(),
            still_valid = back_online,
            gap_s = (now - down_since) / 1000,
            "Presence restored: devices with an open validity window stay online, the rest are unknown until fresh evidence."
        );
    }
    Ok((table, restored))
}

/// Deletes quarantined devices no operator approved within `ttl`: at start, then every
/// tenth of `ttl` (at most hourly), so an id flood's leftovers do not stay for good.
pub async fn expire_quarantine(
    registry: Registry,
    presence: presence::runner::PresenceHandle,
    metrics: Metrics,
    ttl: std::time::Duration,
    cancel: CancellationToken,
) {
    let every = (ttl / 10).clamp(std::time::Duration::from_secs(1), std::time::Duration::from_secs(3600));
    loop {
        match registry.expire_quarantined(now_ms()).await {
            Ok(keys) if !keys.is_empty() => {
                info!(devices = keys.len(), ttl = %humantime::format_duration(ttl), "Quarantined devices no one approved have expired and were deleted.");
                metrics.quarantine_expired.inc_by(keys.len() as u64);
                for k in keys {
                    let _ = presence.forget(k).await;
                }
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "Cannot delete expired quarantined devices; trying again later."),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
