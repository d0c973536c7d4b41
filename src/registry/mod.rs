//! The registry: orgs (a tree), devices and their video channels.
//!
//! Owns the domain types and the `Registry` handle, which writes through to the store
//! (sqlx, `store.rs`) and keeps an in-memory copy (`cache.rs`) that the API, presence and
//! the rate rollup read without touching the database. It knows nothing of protocols or
//! sockets; sources ask it to admit devices (`admission.rs`) and never write tables
//! themselves. Writes come from the API, the CSV import and sources' admissions.

mod admission;
mod cache;
pub mod import;
mod store;

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use serde::{Deserialize, Serialize};

pub use admission::{AdmissionOutcome, Refusal as AdmissionRefusal, UnknownDevice};
pub use cache::Cache;

use crate::clock::{now_ms, Millis};
use crate::config::Admission as AdmissionConfig;
use crate::db::Db;
use crate::error::ErrorKind;
use crate::ids::{DeviceId, GbCode, OrgId};

pub use crate::domain::{Admission, DeviceKey, DeviceKind, OrgKind, Protocol};

/// An org node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Org {
    pub id: String,
    pub name: String,
    pub kind: OrgKind,
    pub parent_id: Option<String>,
    pub gb_prefix: Option<String>,
}

impl Org {
    /// An org of the config's `[[orgs]]` seed.
    pub fn from_seed(o: &crate::config::OrgSeed) -> Org {
        Org {
            id: o.id.clone(),
            name: o.name.clone(),
            kind: o.kind,
            parent_id: o.parent.clone(),
            gb_prefix: o.gb_prefix.clone(),
        }
    }
}

/// A device as the registry holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Device {
    pub key: DeviceKey,
    pub id: String,
    pub name: String,
    pub kind: DeviceKind,
    pub protocol: Protocol,
    pub org_id: Option<String>,
    pub profile: Option<String>,
    pub rtsp_url: Option<String>,
    pub password: Option<String>,
    pub enabled: bool,
    pub maintenance: bool,
    pub admission: Admission,
    pub attrs: serde_json::Map<String, serde_json::Value>,
    pub created_at: Millis,
}

impl Device {
    /// Whether the device is in the denominator of the online rate.
    pub fn counted(&self, count_maintenance: bool) -> bool {
        self.enabled && self.admission == Admission::Approved && (count_maintenance || !self.maintenance)
    }
}

/// A video channel under a GB/T 28181 device or NVR.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Channel {
    pub id: String,
    pub name: String,
    /// The catalog's Status: ON counts as online while the parent device is.
    pub status_on: bool,
    #[serde(default)]
    pub attrs: serde_json::Map<String, serde_json::Value>,
}

/// A device to create or replace (API, CSV import, config).
#[derive(Debug, Clone, PartialEq)]
pub struct NewDevice {
    pub id: String,
    pub name: String,
    pub kind: DeviceKind,
    pub protocol: Protocol,
    pub org_id: Option<String>,
    pub profile: Option<String>,
    pub rtsp_url: Option<String>,
    pub password: Option<String>,
    pub admission: Admission,
    pub attrs: serde_json::Map<String, serde_json::Value>,
}

/// A change to a device (PATCH). `None` leaves the field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DevicePatch {
    pub name: Option<String>,
    pub org_id: Option<Option<String>>,
    pub enabled: Option<bool>,
    pub maintenance: Option<bool>,
    pub admission: Option<Admission>,
    /// A new device password (`Some(None)`: back to the port's default).
    pub password: Option<Option<String>>,
}

/// A change to an org (PATCH).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OrgPatch {
    pub name: Option<String>,
    pub parent_id: Option<Option<String>>,
    pub gb_prefix: Option<Option<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{what} {id:?} not found")]
    NotFound { what: &'static str, id: String },
    #[error("{0}")]
    Conflict(String),
    #[error("registry storage: {0}")]
    Store(#[from] sqlx::Error),
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Invalid { .. } => ErrorKind::InvalidInput,
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::Conflict(_) => ErrorKind::Conflict,
            Error::Store(e) => crate::db::sqlx_kind(e),
        }
    }
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Invalid { field: field.into(), message: message.into() }
    }
    /// The field a validation error names, for API error bodies.
    pub fn field(&self) -> Option<&str> {
        match self {
            Error::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// The registry handle: write-through to the database, reads from memory.
#[derive(Clone)]
pub struct Registry {
    db: Db,
    cache: Arc<RwLock<Cache>>,
    admission: AdmissionConfig,
    /// Held by every read-modify-write of a device or its channels (an attribute merge from
    /// a source, a PATCH from the API, a catalog change), so two of them never lose each
    /// other's changes.
    merging: Arc<tokio::sync::Mutex<()>>,
    /// New devices per origin this minute (admission limits).
    rates: Arc<std::sync::Mutex<admission::Rates>>,
}

impl Registry {
    /// Loads orgs, devices and channels from the database.
    pub async fn load(db: Db, admission: AdmissionConfig) -> Result<Self, Error> {
        let orgs = store::load_orgs(&db.pool).await?;
        let devices = store::load_devices(&db).await?;
        let channels = store::load_channels(&db.pool).await?;
        let cache = Cache::build(orgs, devices, channels);
        Ok(Self { db, cache: Arc::new(RwLock::new(cache)), admission, merging: Arc::default(), rates: Arc::default() })
    }

    /// Read access to the in-memory registry. Never hold it across an await.
    pub fn read(&self) -> RwLockReadGuard<'_, Cache> {
        self.cache.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write_cache<R>(&self, f: impl FnOnce(&mut Cache) -> R) -> R {
        let mut guard = self.cache.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(&mut guard)
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    // ---- orgs ----

    /// Checks an org before it is written: id, name, parent exists, no cycle.
    fn check_org(&self, org: &Org, is_new: bool) -> Result<(), Error> {
        OrgId::parse(&org.id).map_err(|e| Error::invalid("id", e.to_string()))?;
        check_text("name", &org.name)?;
        if org.name.trim().is_empty() {
            return Err(Error::invalid("name", "must not be empty"));
        }
        if let Some(prefix) = &org.gb_prefix {
            if prefix.is_empty() || prefix.len() > 10 || !prefix.chars().all(|c| c.is_ascii_digit()) {
                return Err(Error::invalid("gb_prefix", format!("{prefix:?} is not 1 to 10 digits")));
            }
        }
        let cache = self.read();
        if is_new && cache.org(&org.id).is_some() {
            return Err(Error::Conflict(format!("org {:?} exists already", org.id)));
        }
        if let Some(parent) = &org.parent_id {
            if cache.org(parent).is_none() {
                return Err(Error::invalid("parent_id", format!("no org {parent:?}")));
            }
            if !is_new && cache.is_in_subtree(parent, &org.id) {
                return Err(Error::invalid("parent_id", format!("{parent:?} is inside {:?}'s own subtree", org.id)));
            }
        }
        Ok(())
    }

    pub async fn create_org(&self, org: Org) -> Result<Org, Error> {
        self.check_org(&org, true)?;
        store::insert_org(&self.db.pool, &org, now_ms()).await?;
        self.write_cache(|c| c.put_org(org.clone()));
        Ok(org)
    }

    /// Creates or updates orgs from the config seed (parents listed first).
    pub async fn seed_orgs(&self, orgs: &[Org]) -> Result<(), Error> {
        for org in orgs {
            let exists = self.read().org(&org.id).cloned();
            match exists {
                None => {
                    self.create_org(org.clone()).await?;
                }
                Some(old) if &old != org => {
                    self.check_org(org, false)?;
                    store::update_org(&self.db.pool, org).await?;
                    self.write_cache(|c| c.put_org(org.clone()));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    pub async fn update_org(&self, id: &str, patch: OrgPatch) -> Result<Org, Error> {
        let mut org = self.read().org(id).cloned().ok_or_else(|| Error::NotFound { what: "org", id: id.into() })?;
        if let Some(n) = patch.name {
            org.name = n;
        }
        if let Some(p) = patch.parent_id {
            org.parent_id = p;
        }
        if let Some(g) = patch.gb_prefix {
            org.gb_prefix = g;
        }
        self.check_org(&org, false)?;
        store::update_org(&self.db.pool, &org).await?;
        self.write_cache(|c| c.put_org(org.clone()));
        Ok(org)
    }

    pub async fn delete_org(&self, id: &str) -> Result<(), Error> {
        {
            let cache = self.read();
            if cache.org(id).is_none() {
                return Err(Error::NotFound { what: "org", id: id.into() });
            }
            let children = cache.children(id).len();
            let devices = cache.devices().filter(|d| d.org_id.as_deref() == Some(id)).count();
            if children > 0 || devices > 0 {
                return Err(Error::Conflict(format!(
                    "org {id:?} still has {children} child org(s) and {devices} device(s): move or delete them first"
                )));
            }
        }
        store::delete_org(&self.db.pool, id).await?;
        self.write_cache(|c| c.remove_org(id));
        Ok(())
    }

    // ---- devices ----

    /// Validates a new device and fills in what can be derived (org from the GB/T 28181
    /// prefix). `field_prefix` is prepended to field names in errors.
    pub fn prepare_device(&self, mut d: NewDevice) -> Result<NewDevice, Error> {
        DeviceId::parse(&d.id).map_err(|e| Error::invalid("id", e.to_string()))?;
        if d.name.trim().is_empty() {
            d.name = d.id.clone();
        }
        if d.name.chars().count() > 200 {
            return Err(Error::invalid("name", "longer than 200 characters"));
        }
        check_text("name", &d.name)?;
        if d.protocol == Protocol::Gb28181 {
            GbCode::parse(&d.id).map_err(|e| Error::invalid("id", e.to_string()))?;
        }
        // Any device with a 20-digit code (GB/T 28181, a GA/T 1400 checkpoint, an MQTT device
        // numbered the same way) is placed by the code's administrative-division prefix.
        if d.org_id.is_none() && self.admission.org_from_gb_prefix {
            if let Ok(code) = GbCode::parse(&d.id) {
                d.org_id = self.read().org_for_gb_code(code.as_str()).map(|o| o.id.clone());
            }
        }
        if d.protocol == Protocol::Rtsp {
            match &d.rtsp_url {
                None => return Err(Error::invalid("rtsp_url", "required for protocol rtsp")),
                Some(u) => {
                    let parsed =
                        url::Url::parse(u).map_err(|e| Error::invalid("rtsp_url", format!("not a URL: {e}")))?;
                    if !matches!(parsed.scheme(), "rtsp" | "rtsps") {
                        return Err(Error::invalid("rtsp_url", "must start with rtsp:// or rtsps://"));
                    }
                }
            }
        }
        if let Some(org) = &d.org_id {
            if self.read().org(org).is_none() {
                return Err(Error::invalid("org_id", format!("no org {org:?}")));
            }
        }
        Ok(d)
    }

    /// Creates one device (API). Conflict if the id exists.
    pub async fn create_device(&self, d: NewDevice) -> Result<Arc<Device>, Error> {
        let d = self.prepare_device(d)?;
        if self.read().device(&d.id).is_some() {
            return Err(Error::Conflict(format!("device {:?} exists already", d.id)));
        }
        let (created, _) = self.upsert_devices(vec![d], |_| {}).await?;
        created.into_iter().next().ok_or_else(|| Error::Conflict("device was not written".into()))
    }

    /// Writes devices in one transaction (all or none) and returns them with the number
    /// that already existed. `progress` is called with the rows written so far.
    pub async fn upsert_devices(
        &self,
        devices: Vec<NewDevice>,
        progress: impl FnMut(usize),
    ) -> Result<(Vec<Arc<Device>>, usize), Error> {
        let now = now_ms();
        let existed: HashMap<String, Millis> = {
            let cache = self.read();
            devices.iter().filter_map(|d| cache.device(&d.id).map(|old| (d.id.clone(), old.created_at))).collect()
        };
        store::upsert_devices(&self.db, &devices, now, progress).await?;
        let updated = existed.len();
        let written = self.write_cache(|c| {
            devices
                .into_iter()
                .map(|d| {
                    let created_at = existed.get(&d.id).copied().unwrap_or(now);
                    c.put_device(d, created_at)
                })
                .collect::<Vec<_>>()
        });
        Ok((written, updated))
    }

    pub async fn update_device(&self, id: &str, patch: DevicePatch) -> Result<Arc<Device>, Error> {
        let _merging = self.merging.lock().await;
        let mut dev =
            (*self.read().device(id).ok_or_else(|| Error::NotFound { what: "device", id: id.into() })?).clone();
        if let Some(n) = patch.name {
            if n.trim().is_empty() {
                return Err(Error::invalid("name", "must not be empty"));
            }
            check_text("name", &n)?;
            dev.name = n;
        }
        if let Some(o) = patch.org_id {
            if let Some(org) = &o {
                if self.read().org(org).is_none() {
                    return Err(Error::invalid("org_id", format!("no org {org:?}")));
                }
            }
            dev.org_id = o;
        }
        if let Some(e) = patch.enabled {
            dev.enabled = e;
        }
        if let Some(m) = patch.maintenance {
            dev.maintenance = m;
        }
        if let Some(a) = patch.admission {
            dev.admission = a;
        }
        if let Some(p) = patch.password {
            if p.as_deref().is_some_and(|p| p.len() < 8 || p.chars().any(char::is_control)) {
                return Err(Error::invalid("password", "at least 8 characters, no control characters"));
            }
            dev.password = p;
        }
        store::update_device(&self.db.pool, &dev, now_ms()).await?;
        Ok(self.write_cache(|c| c.replace_device(dev)))
    }

    pub async fn delete_device(&self, id: &str) -> Result<DeviceKey, Error> {
        let key =
            self.read().device(id).map(|d| d.key).ok_or_else(|| Error::NotFound { what: "device", id: id.into() })?;
        store::delete_device(&self.db.pool, id).await?;
        self.write_cache(|c| c.remove_device(id));
        Ok(key)
    }

    /// Replaces a device's channels (a full catalog).
    pub async fn replace_channels(&self, device_id: &str, channels: Vec<Channel>) -> Result<(), Error> {
        let _merging = self.merging.lock().await;
        self.write_channels(device_id, channels).await
    }

    async fn write_channels(&self, device_id: &str, channels: Vec<Channel>) -> Result<(), Error> {
        if self.read().device(device_id).is_none() {
            return Err(Error::NotFound { what: "device", id: device_id.into() });
        }
        store::replace_channels(&self.db, device_id, &channels).await?;
        self.write_cache(|c| c.set_channels(device_id, channels));
        Ok(())
    }

    /// Merges attributes a source learned into many devices in one transaction; devices whose
    /// attributes would not change are not written. Returns how many were written. Unknown
    /// ids are skipped (the device may have been deleted meanwhile).
    pub async fn merge_attrs_many(
        &self,
        batch: Vec<(String, serde_json::Map<String, serde_json::Value>)>,
    ) -> Result<usize, Error> {
        let _merging = self.merging.lock().await;
        // One entry per device, later attributes over earlier ones.
        let mut merged: std::collections::HashMap<String, serde_json::Map<String, serde_json::Value>> =
            std::collections::HashMap::new();
        for (id, attrs) in batch {
            merged.entry(id).or_default().extend(attrs);
        }
        let mut changed: Vec<Device> = Vec::new();
        {
            let cache = self.read();
            for (id, attrs) in merged {
                let Some(d) = cache.device(&id) else { continue };
                if attrs.iter().all(|(k, v)| d.attrs.get(k) == Some(v)) {
                    continue;
                }
                let mut dev = (*d).clone();
                dev.attrs.extend(attrs);
                changed.push(dev);
            }
        }
        if changed.is_empty() {
            return Ok(0);
        }
        let rows: Vec<serde_json::Value> = changed
            .iter()
            .map(|d| serde_json::json!([d.id, serde_json::Value::Object(d.attrs.clone()).to_string()]))
            .collect();
        store::update_attrs_many(&self.db, &serde_json::Value::Array(rows).to_string(), now_ms()).await?;
        let n = changed.len();
        self.write_cache(|c| {
            for d in changed {
                c.replace_device(d);
            }
        });
        Ok(n)
    }

    /// Merges attributes a source learned (manufacturer, model, firmware, ...) into a device.
    pub async fn merge_attrs(
        &self,
        id: &str,
        attrs: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Arc<Device>, Error> {
        let _merging = self.merging.lock().await;
        let mut dev =
            (*self.read().device(id).ok_or_else(|| Error::NotFound { what: "device", id: id.into() })?).clone();
        for (k, v) in attrs {
            dev.attrs.insert(k, v);
        }
        store::update_attrs(&self.db.pool, id, &serde_json::Value::Object(dev.attrs.clone()).to_string(), now_ms())
            .await?;
        Ok(self.write_cache(|c| c.replace_device(dev)))
    }

    /// A device's stored channels by id, to merge changes into.
    fn channel_map(&self, device_id: &str) -> std::collections::BTreeMap<String, Channel> {
        self.read()
            .channels(device_id)
            .map(|c| c.iter().map(|ch| (ch.id.clone(), ch.clone())).collect())
            .unwrap_or_default()
    }

    /// Adds or updates the given channels and keeps every other one (a partial catalog).
    pub async fn merge_channels(&self, device_id: &str, channels: Vec<Channel>) -> Result<(), Error> {
        let _merging = self.merging.lock().await;
        let mut all = self.channel_map(device_id);
        for ch in channels {
            all.insert(ch.id.clone(), ch);
        }
        self.write_channels(device_id, all.into_values().collect()).await
    }

    /// Applies a catalog change a device notified: `upserts` add channels or update them
    /// (a notify that carries only a status keeps the stored name and attributes), `removes`
    /// delete them.
    pub async fn patch_channels(
        &self,
        device_id: &str,
        upserts: Vec<Channel>,
        removes: &[String],
    ) -> Result<(), Error> {
        let _merging = self.merging.lock().await;
        let mut all = self.channel_map(device_id);
        for ch in upserts {
            match all.get_mut(&ch.id) {
                Some(old) => {
                    if !ch.name.is_empty() {
                        old.name = ch.name;
                    }
                    old.status_on = ch.status_on;
                    old.attrs.extend(ch.attrs);
                }
                None => {
                    all.insert(ch.id.clone(), ch);
                }
            }
        }
        for id in removes {
            all.remove(id);
        }
        self.write_channels(device_id, all.into_values().collect()).await
    }

    /// Reads a value a source keeps across restarts (e.g. the GB/T 28181 sessions).
    pub async fn load_state(&self, key: &str) -> Result<Option<String>, Error> {
        Ok(crate::db::get_state(&self.db.pool, key).await?)
    }

    /// Saves a value a source keeps across restarts.
    pub async fn save_state(&self, key: &str, value: &str) -> Result<(), Error> {
        Ok(crate::db::set_state(&self.db.pool, key, value).await?)
    }

    /// `admit` for many devices with one write: the outcomes in the order given.
    pub async fn admit_many(&self, unknowns: Vec<UnknownDevice>) -> Result<Vec<AdmissionOutcome>, Error> {
        // One admission at a time: two sources (or two messages) announcing the same new
        // device at once must add it once, not overwrite each other.
        let _merging = self.merging.lock().await;
        let mut outcomes: Vec<Option<AdmissionOutcome>> = Vec::with_capacity(unknowns.len());
        let mut new: Vec<NewDevice> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        // Quarantined devices this batch adds, for the limits.
        let mut pending_total = 0usize;
        let mut pending_quarantine: HashMap<&str, usize> = HashMap::new();
        for u in &unknowns {
            if let Some(d) = self.read().device(&u.id) {
                outcomes.push(Some(AdmissionOutcome::Known(d)));
                continue;
            }
            if seen.contains(&u.id) {
                outcomes.push(None); // a second REGISTER of one new device in the batch
                continue;
            }
            let decided = admission::decide(&self.admission, u).ok_or(admission::Refusal::Closed).and_then(|d| {
                let origin = u.origin.as_deref().unwrap_or("");
                let (total, from_origin) = self.read().quarantined(origin);
                let pending = pending_quarantine.get(origin).copied().unwrap_or(0);
                self.within_limits(&d, u, total + pending_total, from_origin + pending).map(|()| d)
            });
            match decided {
                Err(r) => outcomes.push(Some(AdmissionOutcome::Refused(r))),
                Ok(mut d) => {
                    if d.admission == Admission::Quarantined {
                        pending_total += 1;
                        *pending_quarantine.entry(u.origin.as_deref().unwrap_or("")).or_insert(0) += 1;
                    }
                    // What a device calls itself is kept without control characters (a NUL
                    // or an escape sequence would reach logs, reports and the dashboard).
                    if d.name.chars().any(char::is_control) {
                        d.name = d.name.chars().filter(|c| !c.is_control()).collect();
                    }
                    if seen.insert(u.id.clone()) {
                        new.push(self.prepare_device(d)?);
                    }
                    outcomes.push(None); // filled in once written
                }
            }
        }
        let written: HashMap<String, Arc<Device>> = if new.is_empty() {
            HashMap::new()
        } else {
            let (written, _) = self.upsert_devices(new, |_| {}).await?;
            written.into_iter().map(|d| (d.id.clone(), d)).collect()
        };
        let mut added = std::collections::HashSet::new();
        unknowns
            .iter()
            .zip(outcomes)
            .map(|(u, o)| match o {
                Some(o) => Ok(o),
                None => {
                    let d =
                        written.get(&u.id).cloned().ok_or_else(|| Error::Conflict("device was not written".into()))?;
                    // The first REGISTER of a device in the batch added it; later ones find it.
                    Ok(if added.insert(u.id.clone()) { AdmissionOutcome::Added(d) } else { AdmissionOutcome::Known(d) })
                }
            })
            .collect()
    }

    /// Whether unknown devices are refused outright (`admission.policy = "closed"`).
    pub fn admission_closed(&self) -> bool {
        self.admission.policy == crate::config::AdmissionPolicy::Closed
    }

    /// Whether a new device may be added: its origin's rate this minute, and room in the
    /// quarantine when it would wait there (`total` and `from_origin` wait now).
    fn within_limits(
        &self,
        d: &NewDevice,
        u: &UnknownDevice,
        total: usize,
        from_origin: usize,
    ) -> Result<(), admission::Refusal> {
        let Some(origin) = &u.origin else {
            // A broker's devices: only the total.
            return match d.admission {
                Admission::Quarantined => admission::room(&self.admission, total, None),
                _ => Ok(()),
            };
        };
        if d.admission == Admission::Quarantined {
            admission::room(&self.admission, total, Some(from_origin))?;
        }
        let fresh = self.rates.lock().unwrap_or_else(|p| p.into_inner()).take(
            origin,
            self.admission.new_per_origin_per_minute,
            now_ms(),
        );
        if fresh {
            Ok(())
        } else {
            Err(admission::Refusal::OriginRate)
        }
    }

    /// Deletes quarantined devices no operator approved within `admission.quarantine_ttl`;
    /// answers their keys (for presence to forget).
    pub async fn expire_quarantined(&self, now: Millis) -> Result<Vec<DeviceKey>, Error> {
        let ttl = i64::try_from(self.admission.quarantine_ttl.as_millis()).unwrap_or(i64::MAX);
        let stale: Vec<String> = self
            .read()
            .devices()
            .filter(|d| d.admission == Admission::Quarantined && now.saturating_sub(d.created_at) >= ttl)
            .map(|d| d.id.clone())
            .collect();
        let mut keys = Vec::with_capacity(stale.len());
        for id in stale {
            match self.delete_device(&id).await {
                Ok(k) => keys.push(k),
                Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(keys)
    }

    /// Decides what happens to a device that announced itself (sources call this).
    pub async fn admit(&self, unknown: UnknownDevice) -> Result<AdmissionOutcome, Error> {
        if let Some(d) = self.read().device(&unknown.id) {
            return Ok(AdmissionOutcome::Known(d));
        }
        // Serialized, then checked again: concurrent messages of one new device add it once.
        let _merging = self.merging.lock().await;
        if let Some(d) = self.read().device(&unknown.id) {
            return Ok(AdmissionOutcome::Known(d));
        }
        let Some(mut new) = admission::decide(&self.admission, &unknown) else {
            return Ok(AdmissionOutcome::Refused(admission::Refusal::Closed));
        };
        if new.name.chars().any(char::is_control) {
            new.name = new.name.chars().filter(|c| !c.is_control()).collect();
        }
        let (total, from_origin) = self.read().quarantined(unknown.origin.as_deref().unwrap_or(""));
        if let Err(r) = self.within_limits(&new, &unknown, total, from_origin) {
            return Ok(AdmissionOutcome::Refused(r));
        }
        let new = self.prepare_device(new)?;
        let (mut written, _) = self.upsert_devices(vec![new], |_| {}).await?;
        let d = written.pop().ok_or_else(|| Error::Conflict("device was not written".into()))?;
        Ok(AdmissionOutcome::Added(d))
    }
}

/// Text an operator writes (names) holds no control characters: a NUL or an escape sequence
/// would reach the logs, the reports and the dashboard as it is.
fn check_text(field: &'static str, value: &str) -> Result<(), Error> {
    match value.chars().find(|c| c.is_control()) {
        Some(c) => Err(Error::invalid(field, format!("contains the control character U+{:04X}", u32::from(c)))),
        None => Ok(()),
    }
}
