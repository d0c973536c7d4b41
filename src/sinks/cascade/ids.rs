//! GB/T 28181 ids for the devices that have none of their own — RTSP cameras, GA/T 1400
//! checkpoints, community devices where an upper takes them — so an upper platform sees them
//! as channels (the "国标网关" feature), and for orgs shown as business groups (215) and
//! virtual organisations (216). An id is the device's org's division code (its `gb_prefix`,
//! padded to the 8-digit centre code; the gateway's own without one), the gateway's industry
//! code, the type (132 network camera, 134 alarm input, 139 other peripheral), network 0, and
//! the next serial of `gb28181.id_serials`. Allocated once, stored (`cascade_ids`),
//! the same across restarts and uppers, and never given to another device even after its own
//! is deleted.

use std::collections::{HashMap, HashSet};
use std::ops::RangeInclusive;
use std::sync::Mutex;

use sqlx::Row;
use tracing::{info, warn};

use crate::clock::now_ms;
use crate::db::Db;

/// Type codes of allocated ids: a network camera, an alarm input (a community sensor), another
/// peripheral (an access terminal, a barrier, an intercom), a business group, a virtual
/// organisation.
pub const TYPE_CAMERA: &str = "132";
pub const TYPE_ALARM_INPUT: &str = "134";
pub const TYPE_PERIPHERAL: &str = "139";
pub const TYPE_GROUP: &str = "215";
pub const TYPE_VIRTUAL_ORG: &str = "216";

/// What needs an id: a device (or `org:<id>` for an org in the `groups` tree), its org's
/// division prefix, the type code.
pub struct Wanted {
    pub device_id: String,
    pub prefix: Option<String>,
    pub type_code: &'static str,
}

pub struct Ids {
    db: Db,
    serials: RangeInclusive<u32>,
    /// The gateway's own centre code (8 digits) and industry code (2).
    centre: String,
    industry: String,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    by_device: HashMap<String, String>,
    given: HashSet<String>,
    next: u32,
}

impl Ids {
    /// The ids given so far, from the database.
    pub async fn load(db: Db, serials: RangeInclusive<u32>, gateway_id: &str) -> Result<Ids, sqlx::Error> {
        let rows = sqlx::query("SELECT device_id, gb_id FROM cascade_ids").fetch_all(&db.pool).await?;
        let mut st = State { next: *serials.start(), ..State::default() };
        for r in rows {
            let (device, gb): (String, String) = (r.try_get("device_id")?, r.try_get("gb_id")?);
            if let Some(n) = gb.get(14..).and_then(|s| s.parse::<u32>().ok()).filter(|n| serials.contains(n)) {
                st.next = st.next.max(n + 1);
            }
            st.given.insert(gb.clone());
            st.by_device.insert(device, gb);
        }
        let digits = |r: std::ops::Range<usize>, or: &str| gateway_id.get(r).unwrap_or(or).to_owned();
        Ok(Ids { db, serials, centre: digits(0..8, "00000000"), industry: digits(8..10, "00"), state: Mutex::new(st) })
    }

    /// The id given to `device`, if one was.
    pub fn get(&self, device: &str) -> Option<String> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).by_device.get(device).cloned()
    }

    /// Gives ids to `wanted` (skipping any id `taken` says a device already has), stores
    /// them, and answers them by device. Past the end of the serials, none.
    pub async fn allocate(
        &self,
        wanted: Vec<Wanted>,
        taken: impl Fn(&str) -> bool,
    ) -> Result<HashMap<String, String>, sqlx::Error> {
        let mut fresh = Vec::new();
        {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            for w in wanted {
                if st.by_device.contains_key(&w.device_id) {
                    continue;
                }
                let centre = match w.prefix.as_deref().filter(|p| p.len() <= 8 && p.bytes().all(|c| c.is_ascii_digit()))
                {
                    Some(p) if !p.is_empty() => format!("{p:0<8}"),
                    _ => self.centre.clone(),
                };
                let id = loop {
                    if st.next > *self.serials.end() {
                        break None;
                    }
                    let id = format!("{centre}{}{}0{:06}", self.industry, w.type_code, st.next);
                    st.next += 1;
                    if !st.given.contains(&id) && !taken(&id) {
                        break Some(id);
                    }
                };
                let Some(id) = id else {
                    warn!(device = %w.device_id, serials = ?self.serials, "No GB/T 28181 id left to give (gb28181.id_serials is used up); the device stays out of the cascade catalog.");
                    break;
                };
                st.given.insert(id.clone());
                st.by_device.insert(w.device_id.clone(), id.clone());
                fresh.push((w.device_id, id));
            }
        }
        if fresh.is_empty() {
            return Ok(HashMap::new());
        }
        if let Err(e) = self.store(&fresh).await {
            // Not stored: not given (the ids stay unused in this process, never handed twice).
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            for (device, _) in &fresh {
                st.by_device.remove(device);
            }
            return Err(e);
        }
        info!(count = fresh.len(), "GB/T 28181 ids given to devices without one (for the cascade catalog).");
        Ok(fresh.into_iter().collect())
    }

    async fn store(&self, fresh: &[(String, String)]) -> Result<(), sqlx::Error> {
        let at = now_ms();
        let mut tx = self.db.pool.begin().await?;
        for (device, id) in fresh {
            sqlx::query(
                "INSERT INTO cascade_ids (device_id, gb_id, allocated_at) VALUES ($1, $2, $3) ON CONFLICT (device_id) DO NOTHING",
            )
            .bind(device)
            .bind(id)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    }
}
