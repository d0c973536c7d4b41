//! The in-memory registry: orgs with their tree, devices by id and by key, channels.
//! Pure data; the `Registry` handle keeps it in step with the store. `generation` changes
//! on every write so readers (the rate index) know when to rebuild what they derive.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use super::{Channel, Device, DeviceKey, NewDevice, Org};
use crate::clock::Millis;

#[derive(Debug, Default)]
pub struct Cache {
    orgs: BTreeMap<String, Org>,
    children: HashMap<String, Vec<String>>,
    by_id: BTreeMap<String, DeviceKey>,
    by_key: Vec<Option<Arc<Device>>>,
    channels: HashMap<String, Arc<Vec<Channel>>>,
    generation: u64,
    /// Changes only with what the online rate counts (orgs, devices coming and going, a
    /// device's kind, protocol, org, flags or admission, channels): an attribute a heartbeat
    /// refreshes does not make the rate recompute or its readers wait.
    counting_generation: u64,
    /// Devices waiting in quarantine, in total and by their `origin` attribute (what the
    /// admission limits count).
    quarantined: usize,
    quarantined_by_origin: HashMap<String, usize>,
}

/// The origin a quarantined device is counted under, if it is quarantined.
fn quarantine_origin(d: &Device) -> Option<&str> {
    (d.admission == super::Admission::Quarantined)
        .then(|| d.attrs.get("origin").and_then(serde_json::Value::as_str).unwrap_or(""))
}

impl Cache {
    /// Counts `d` into (`add`) or out of the quarantine tallies.
    fn tally(&mut self, d: &Device, add: bool) {
        let Some(origin) = quarantine_origin(d) else { return };
        if add {
            self.quarantined += 1;
            *self.quarantined_by_origin.entry(origin.to_owned()).or_insert(0) += 1;
        } else {
            self.quarantined = self.quarantined.saturating_sub(1);
            if let Some(n) = self.quarantined_by_origin.get_mut(origin) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.quarantined_by_origin.remove(origin);
                }
            }
        }
    }

    /// Devices in quarantine now: in total, and from `origin`.
    pub fn quarantined(&self, origin: &str) -> (usize, usize) {
        (self.quarantined, self.quarantined_by_origin.get(origin).copied().unwrap_or(0))
    }

    pub fn build(
        orgs: Vec<Org>,
        devices: Vec<(NewDevice, bool, bool, Millis)>,
        channels: Vec<(String, Channel)>,
    ) -> Self {
        let mut c = Cache::default();
        for o in orgs {
            c.put_org(o);
        }
        for (d, enabled, maintenance, created_at) in devices {
            let dev = c.put_device(d, created_at);
            if !enabled || maintenance {
                let mut changed = (*dev).clone();
                changed.enabled = enabled;
                changed.maintenance = maintenance;
                c.replace_device(changed);
            }
        }
        let mut grouped: HashMap<String, Vec<Channel>> = HashMap::new();
        for (dev, ch) in channels {
            grouped.entry(dev).or_default().push(ch);
        }
        for (dev, chs) in grouped {
            c.channels.insert(dev, Arc::new(chs));
        }
        c
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// See `counting_generation`: what the rate index is built from.
    pub fn counting_generation(&self) -> u64 {
        self.counting_generation
    }

    fn changed(&mut self, counting: bool) {
        self.generation += 1;
        if counting {
            self.counting_generation += 1;
        }
    }

    // ---- orgs ----

    pub fn org(&self, id: &str) -> Option<&Org> {
        self.orgs.get(id)
    }

    /// All orgs, ordered by id.
    pub fn orgs(&self) -> impl Iterator<Item = &Org> {
        self.orgs.values()
    }

    pub fn org_count(&self) -> usize {
        self.orgs.len()
    }

    pub fn children(&self, id: &str) -> &[String] {
        self.children.get(id).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Whether `node` is `root` or lies below it.
    pub fn is_in_subtree(&self, node: &str, root: &str) -> bool {
        let mut cur = Some(node);
        let mut hops = 0;
        while let Some(id) = cur {
            if id == root {
                return true;
            }
            hops += 1;
            if hops > 64 {
                return false;
            }
            cur = self.orgs.get(id).and_then(|o| o.parent_id.as_deref());
        }
        false
    }

    /// The ids of `root` and every org below it.
    pub fn subtree(&self, root: &str) -> HashSet<String> {
        let mut out = HashSet::new();
        let mut stack = vec![root.to_owned()];
        while let Some(id) = stack.pop() {
            if out.insert(id.clone()) {
                stack.extend(self.children(&id).iter().cloned());
            }
        }
        out
    }

    /// The chain from an org up to its root, the org first.
    pub fn ancestors(&self, id: &str) -> Vec<&Org> {
        let mut out = Vec::new();
        let mut cur = self.orgs.get(id);
        while let Some(o) = cur {
            if out.len() > 64 {
                break;
            }
            out.push(o);
            cur = o.parent_id.as_deref().and_then(|p| self.orgs.get(p));
        }
        out
    }

    /// The org whose gb_prefix is the longest prefix of a 20-digit code.
    pub fn org_for_gb_code(&self, code: &str) -> Option<&Org> {
        self.orgs
            .values()
            .filter(|o| o.gb_prefix.as_deref().is_some_and(|p| !p.is_empty() && code.starts_with(p)))
            .max_by_key(|o| o.gb_prefix.as_ref().map(String::len).unwrap_or(0))
    }

    pub fn put_org(&mut self, org: Org) {
        if let Some(old) = self.orgs.get(&org.id) {
            if let Some(p) = &old.parent_id {
                if let Some(list) = self.children.get_mut(p) {
                    list.retain(|c| c != &org.id);
                }
            }
        }
        if let Some(p) = &org.parent_id {
            self.children.entry(p.clone()).or_default().push(org.id.clone());
        }
        self.orgs.insert(org.id.clone(), org);
        self.changed(true);
    }

    pub fn remove_org(&mut self, id: &str) {
        if let Some(old) = self.orgs.remove(id) {
            if let Some(p) = &old.parent_id {
                if let Some(list) = self.children.get_mut(p) {
                    list.retain(|c| c != id);
                }
            }
        }
        self.changed(true);
    }

    // ---- devices ----

    pub fn device(&self, id: &str) -> Option<Arc<Device>> {
        self.by_id.get(id).and_then(|k| self.device_by_key(*k))
    }

    pub fn device_by_key(&self, key: DeviceKey) -> Option<Arc<Device>> {
        self.by_key.get(key as usize).and_then(Clone::clone)
    }

    /// All devices, ordered by id.
    pub fn devices(&self) -> impl Iterator<Item = &Arc<Device>> {
        self.by_id.values().filter_map(|k| self.by_key.get(*k as usize).and_then(Option::as_ref))
    }

    /// Devices with an id strictly greater than `after`, ordered by id (cursor paging).
    pub fn devices_after<'a>(&'a self, after: Option<&'a str>) -> impl Iterator<Item = &'a Arc<Device>> + 'a {
        let range = match after {
            Some(a) => self.by_id.range::<str, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => self.by_id.range::<str, _>(..),
        };
        range.filter_map(|(_, k)| self.by_key.get(*k as usize).and_then(Option::as_ref))
    }

    pub fn device_count(&self) -> usize {
        self.by_id.len()
    }

    /// One past the highest key handed out: the length presence and rate tables need.
    pub fn key_space(&self) -> usize {
        self.by_key.len()
    }

    /// Inserts or replaces a device, keeping its key (and flags) if it exists.
    pub fn put_device(&mut self, d: NewDevice, created_at: Millis) -> Arc<Device> {
        let existing = self.device(&d.id);
        let key = match &existing {
            Some(old) => old.key,
            None => {
                let k = self.by_key.len() as DeviceKey;
                self.by_key.push(None);
                k
            }
        };
        let dev = Arc::new(Device {
            key,
            id: d.id.clone(),
            name: d.name,
            kind: d.kind,
            protocol: d.protocol,
            org_id: d.org_id,
            profile: d.profile,
            rtsp_url: d.rtsp_url,
            password: d.password,
            enabled: existing.as_ref().map(|o| o.enabled).unwrap_or(true),
            maintenance: existing.as_ref().map(|o| o.maintenance).unwrap_or(false),
            admission: d.admission,
            attrs: d.attrs,
            created_at,
        });
        if let Some(old) = &existing {
            self.tally(old, false);
        }
        self.tally(&dev, true);
        self.by_id.insert(d.id, key);
        self.by_key[key as usize] = Some(dev.clone());
        self.changed(true);
        dev
    }

    pub fn replace_device(&mut self, dev: Device) -> Arc<Device> {
        let dev = Arc::new(dev);
        let mut counting = true;
        let mut old_dev = None;
        if let Some(slot) = self.by_key.get_mut(dev.key as usize) {
            counting = slot.as_ref().is_none_or(|old| {
                (old.kind, old.protocol, &old.org_id, old.enabled, old.maintenance, old.admission)
                    != (dev.kind, dev.protocol, &dev.org_id, dev.enabled, dev.maintenance, dev.admission)
            });
            old_dev = slot.replace(dev.clone());
        }
        if let Some(old) = old_dev {
            self.tally(&old, false);
        }
        self.tally(&dev, true);
        self.changed(counting);
        dev
    }

    pub fn remove_device(&mut self, id: &str) {
        if let Some(k) = self.by_id.remove(id) {
            let old = self.by_key.get_mut(k as usize).and_then(Option::take);
            if let Some(old) = old {
                self.tally(&old, false);
            }
        }
        self.channels.remove(id);
        self.changed(true);
    }

    pub fn channels(&self, device_id: &str) -> Option<Arc<Vec<Channel>>> {
        self.channels.get(device_id).cloned()
    }

    pub fn set_channels(&mut self, device_id: &str, channels: Vec<Channel>) {
        if channels.is_empty() {
            self.channels.remove(device_id);
        } else {
            self.channels.insert(device_id.to_owned(), Arc::new(channels));
        }
        self.changed(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Admission, DeviceKind, Protocol};

    /// An attribute a heartbeat refreshes changes the registry, not what the rate counts; a
    /// device put in maintenance changes both.
    #[test]
    fn only_what_the_rate_counts_moves_the_counting_generation() {
        let mut c = Cache::default();
        let d = c.put_device(
            NewDevice {
                id: "gate-1".into(),
                name: "gate".into(),
                kind: DeviceKind::AccessControl,
                protocol: Protocol::External,
                org_id: None,
                profile: None,
                rtsp_url: None,
                password: None,
                admission: Admission::Approved,
                attrs: Default::default(),
            },
            0,
        );
        let (all, counting) = (c.generation(), c.counting_generation());
        let mut refreshed = (*d).clone();
        refreshed.attrs.insert("firmware".into(), "2.1".into());
        c.replace_device(refreshed.clone());
        assert_eq!((c.generation(), c.counting_generation()), (all + 1, counting));
        refreshed.maintenance = true;
        c.replace_device(refreshed);
        assert_eq!((c.generation(), c.counting_generation()), (all + 2, counting + 1));
    }
}
