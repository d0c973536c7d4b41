//! Online rate: the rollup of presence over the org tree and device kinds. Pure: no sockets,
//! no sqlx; time comes in as an argument.
//!
//! `RateIndex` is built from the registry (each device's kind, points and the chain of orgs
//! above it) and rebuilt only when the registry changes. `RateIndex::rollup(states)` then
//! counts online and total points for every org node × kind in one pass. A device counts
//! as one point, or as its channels where it has a catalog (an NVR with 16 cameras is 16
//! points, online while the NVR is and the channel's Status is ON). Devices disabled, in
//! maintenance (unless the assessment counts them) or not approved are not counted.
//! `sampling.rs` stores the rate at the assessment's instants; `report.rs` builds the
//! daily report.

pub mod report;
pub mod sampling;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use serde::Serialize;

use crate::clock::Millis;
use crate::presence::State;
use crate::registry::{Admission, Cache, DeviceKey, DeviceKind, Protocol};

/// Devices whose picture fails video quality diagnosis (alarmed, not yet recovered): online
/// but not intact. Written by the diagnosis of every pulled stream (RTSP cameras, GB/T 28181
/// channels), read by the rollup.
#[derive(Clone, Default)]
pub struct Impaired(Arc<RwLock<HashMap<DeviceKey, Streams>>>);

/// A device's streams failing diagnosis: `None` is the device's own (an RTSP camera), `Some`
/// a GB/T 28181 channel.
type Streams = HashSet<Option<Arc<str>>>;

impl Impaired {
    /// Marks a device's stream (`channel: None`: the device's own, an RTSP camera) or one of
    /// its GB/T 28181 channels as failing diagnosis, or clears it.
    pub fn set(&self, key: DeviceKey, channel: Option<&str>, impaired: bool) {
        let mut g = self.0.write().unwrap_or_else(|p| p.into_inner());
        let channel: Option<Arc<str>> = channel.map(Arc::from);
        if impaired {
            g.entry(key).or_default().insert(channel);
        } else if let Some(set) = g.get_mut(&key) {
            set.remove(&channel);
            if set.is_empty() {
                g.remove(&key);
            }
        }
    }

    /// Forgets every stream of a device (it stopped being pulled).
    pub fn clear(&self, key: DeviceKey) {
        self.0.write().unwrap_or_else(|p| p.into_inner()).remove(&key);
    }

    /// Impaired points per device: its streams failing diagnosis.
    pub fn counts(&self) -> HashMap<DeviceKey, u32> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, s)| (*k, s.len() as u32)).collect()
    }
}

/// Number of device kinds; index `KINDS` in a row is "all kinds".
pub const KINDS: usize = 10;
pub const ALL: usize = KINDS;
const PROTOCOLS: usize = 6;
const MAX_DEPTH: usize = 8;

/// Online and total points, and the online points whose picture passes video quality
/// diagnosis (`intact`; a device never diagnosed counts as intact while online).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub online: u64,
    pub total: u64,
    pub intact: u64,
}

impl Counts {
    pub fn rate(&self) -> Option<f64> {
        (self.total > 0).then(|| self.online as f64 / self.total as f64)
    }

    /// The intact rate (完好率): online and passing diagnosis, over the total.
    pub fn intact_rate(&self) -> Option<f64> {
        (self.total > 0).then(|| self.intact as f64 / self.total as f64)
    }

    pub fn of(online: u64, total: u64) -> Self {
        Counts { online, total, intact: online }
    }

    pub fn add(&mut self, o: Counts) {
        self.online += o.online;
        self.total += o.total;
        self.intact += o.intact;
    }
}

/// Counts per kind, plus all kinds at index `ALL`.
pub type KindRow = [Counts; KINDS + 1];

#[derive(Debug, Clone)]
pub struct OrgNode {
    pub id: String,
    pub name: String,
    pub kind: &'static str,
    pub parent: Option<usize>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    key: u32,
    kind: u8,
    protocol: u8,
    counted: bool,
    approved: bool,
    points: u32,
    points_on: u32,
    depth: u8,
    chain: [u16; MAX_DEPTH],
}

/// What the rollup needs of the registry, dense and ready for one pass.
#[derive(Debug, Clone, Default)]
pub struct RateIndex {
    pub generation: u64,
    pub orgs: Vec<OrgNode>,
    pub org_idx: HashMap<String, usize>,
    entries: Vec<Entry>,
    pub excluded: u64,
}

/// The counts of one moment.
#[derive(Debug, Clone)]
pub struct Rollup {
    pub at: Millis,
    /// Per org node (index as in `RateIndex::orgs`), its whole subtree.
    pub per_org: Vec<KindRow>,
    /// The whole gateway, including devices placed in no org.
    pub root: KindRow,
    /// Approved devices (not points) by [kind][protocol][state].
    pub devices: [[[u64; 3]; PROTOCOLS]; KINDS],
}

impl RateIndex {
    /// Builds the index from the registry. `count_maintenance` follows the local rule.
    pub fn build(cache: &Cache, count_maintenance: bool) -> Self {
        let mut orgs = Vec::with_capacity(cache.org_count());
        let mut org_idx = HashMap::with_capacity(cache.org_count());
        for o in cache.orgs() {
            org_idx.insert(o.id.clone(), orgs.len());
            orgs.push(OrgNode { id: o.id.clone(), name: o.name.clone(), kind: o.kind.as_str(), parent: None });
        }
        for o in cache.orgs() {
            let parent = o.parent_id.as_ref().and_then(|p| org_idx.get(p).copied());
            if let Some(i) = org_idx.get(&o.id) {
                orgs[*i].parent = parent;
            }
        }
        let mut entries = Vec::with_capacity(cache.device_count());
        let mut excluded = 0;
        for d in cache.devices() {
            let counted = d.counted(count_maintenance);
            if !counted {
                excluded += 1;
            }
            let mut chain = [0u16; MAX_DEPTH];
            let mut depth = 0;
            let mut cur = d.org_id.as_ref().and_then(|o| org_idx.get(o).copied());
            while let Some(i) = cur {
                if depth == MAX_DEPTH {
                    break;
                }
                chain[depth] = i as u16;
                depth += 1;
                cur = orgs[i].parent;
            }
            let (points, points_on) = match cache.channels(&d.id) {
                Some(chs) if !chs.is_empty() => (chs.len() as u32, chs.iter().filter(|c| c.status_on).count() as u32),
                _ => (1, 1),
            };
            entries.push(Entry {
                key: d.key,
                kind: d.kind.index() as u8,
                protocol: d.protocol.index() as u8,
                counted,
                approved: d.admission == Admission::Approved,
                points,
                points_on,
                depth: depth as u8,
                chain,
            });
        }
        RateIndex { generation: cache.counting_generation(), orgs, org_idx, entries, excluded }
    }

    /// Counts every org node × kind for the given presence states (`State as u8` by key).
    /// `impaired`: per device, how many of its points (channels, or the device's own stream)
    /// fail video quality diagnosis.
    pub fn rollup(&self, states: &[u8], impaired: &HashMap<DeviceKey, u32>, at: Millis) -> Rollup {
        let mut per_org = vec![[Counts::default(); KINDS + 1]; self.orgs.len()];
        let mut root = [Counts::default(); KINDS + 1];
        let mut devices = [[[0u64; 3]; PROTOCOLS]; KINDS];
        for e in &self.entries {
            let state = states.get(e.key as usize).copied().unwrap_or(0);
            if e.approved {
                devices[e.kind as usize][e.protocol as usize][state.min(2) as usize] += 1;
            }
            if !e.counted {
                continue;
            }
            let online = if state == State::Online as u8 { u64::from(e.points_on) } else { 0 };
            let bad = impaired.get(&e.key).map_or(0, |n| u64::from(*n));
            let intact = online.saturating_sub(bad);
            let add = Counts { online, total: u64::from(e.points), intact };
            let k = e.kind as usize;
            root[k].add(add);
            root[ALL].add(add);
            for &o in &e.chain[..e.depth as usize] {
                let row = &mut per_org[o as usize];
                row[k].add(add);
                row[ALL].add(add);
            }
        }
        Rollup { at, per_org, root, devices }
    }

    /// The org indices in the subtree of `root` (all orgs when `None`), parents first.
    pub fn subtree(&self, root: Option<usize>) -> Vec<usize> {
        let mut children: Vec<Vec<usize>> = vec![Vec::new(); self.orgs.len()];
        let mut tops = Vec::new();
        for (i, o) in self.orgs.iter().enumerate() {
            match o.parent {
                Some(p) => children[p].push(i),
                None => tops.push(i),
            }
        }
        let mut out = Vec::new();
        let mut stack: Vec<usize> = match root {
            Some(r) => vec![r],
            None => tops.into_iter().rev().collect(),
        };
        while let Some(i) = stack.pop() {
            out.push(i);
            stack.extend(children[i].iter().rev());
        }
        out
    }
}

impl Rollup {
    /// The counts for an org (or the whole gateway) and a kind (or all kinds).
    pub fn counts(&self, org: Option<usize>, kind: Option<DeviceKind>) -> Counts {
        let row = match org {
            Some(i) => self.per_org.get(i).copied().unwrap_or_default(),
            None => self.root,
        };
        row[kind.map(DeviceKind::index).unwrap_or(ALL)]
    }

    /// Approved devices by (kind, protocol, state), for the `vigil_devices` gauge.
    pub fn device_counts(&self) -> impl Iterator<Item = (DeviceKind, Protocol, State, u64)> + '_ {
        DeviceKind::ALL.iter().flat_map(move |k| {
            Protocol::ALL.iter().flat_map(move |p| {
                [State::Unknown, State::Online, State::Offline]
                    .into_iter()
                    .map(move |s| (*k, *p, s, self.devices[k.index()][p.index()][s as usize]))
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Channel, NewDevice, Org, OrgKind};

    fn org(id: &str, kind: OrgKind, parent: Option<&str>) -> Org {
        Org { id: id.into(), name: id.into(), kind, parent_id: parent.map(Into::into), gb_prefix: None }
    }

    fn dev(id: &str, kind: DeviceKind, org: &str, admission: Admission) -> (NewDevice, bool, bool, Millis) {
        (
            NewDevice {
                id: id.into(),
                name: id.into(),
                kind,
                protocol: Protocol::External,
                org_id: Some(org.into()),
                profile: None,
                rtsp_url: None,
                password: None,
                admission,
                attrs: Default::default(),
            },
            true,
            false,
            0,
        )
    }

    #[test]
    fn rollup_counts_subtrees_kinds_channels_and_exclusions() {
        let orgs = vec![
            org("d", OrgKind::District, None),
            org("s1", OrgKind::Street, Some("d")),
            org("c1", OrgKind::Community, Some("s1")),
            org("s2", OrgKind::Street, Some("d")),
        ];
        let mut devices = vec![
            dev("cam1", DeviceKind::Camera, "c1", Admission::Approved),
            dev("cam2", DeviceKind::Camera, "s2", Admission::Approved),
            dev("nvr1", DeviceKind::Nvr, "c1", Admission::Approved),
            dev("q1", DeviceKind::Camera, "c1", Admission::Quarantined),
            dev("m1", DeviceKind::Barrier, "s2", Admission::Approved),
        ];
        devices[4].2 = true; // maintenance
        let channels = (0..4)
            .map(|i| {
                (
                    "nvr1".to_string(),
                    Channel { id: format!("ch{i}"), name: String::new(), status_on: i != 3, attrs: Default::default() },
                )
            })
            .collect();
        let cache = Cache::build(orgs, devices, channels);
        let idx = RateIndex::build(&cache, false);
        assert_eq!(idx.excluded, 2);
        let key = |id: &str| cache.device(id).expect("exists").key as usize;
        let mut states = vec![0u8; cache.key_space()];
        states[key("cam1")] = State::Online as u8;
        states[key("nvr1")] = State::Online as u8;
        states[key("q1")] = State::Online as u8;
        let r = idx.rollup(&states, &HashMap::new(), 0);
        let o = |id: &str| Some(idx.org_idx[id]);
        // District: cam1 (1/1) + cam2 (0/1) + nvr1 channels (3 of 4 ON) = 4 / 6.
        assert_eq!(r.counts(o("d"), None), Counts::of(4, 6));
        assert_eq!(r.counts(o("d"), Some(DeviceKind::Camera)), Counts::of(1, 2));
        assert_eq!(r.counts(o("c1"), Some(DeviceKind::Nvr)), Counts::of(3, 4));
        assert_eq!(r.counts(o("s2"), None), Counts::of(0, 1));
        assert_eq!(r.counts(None, None), Counts::of(4, 6));
        assert_eq!(idx.subtree(o("s1")).len(), 2);
        // cam1's picture fails diagnosis: online, not intact; cam2 (offline) changes nothing.
        let marks = Impaired::default();
        marks.set(key("cam1") as DeviceKey, None, true);
        marks.set(key("cam2") as DeviceKey, None, true);
        let r = idx.rollup(&states, &marks.counts(), 0);
        assert_eq!(r.counts(o("d"), None), Counts { online: 4, total: 6, intact: 3 });
        assert_eq!(r.counts(o("d"), Some(DeviceKind::Camera)).intact_rate(), Some(0.0));
        assert_eq!(r.counts(o("c1"), Some(DeviceKind::Nvr)).intact, 3);
        // Two of the NVR's channels fail diagnosis: its 3 online points leave 1 intact; one
        // recovers, 2 intact.
        let nvr = key("nvr1") as DeviceKey;
        marks.set(nvr, Some("ch-a"), true);
        marks.set(nvr, Some("ch-b"), true);
        assert_eq!(idx.rollup(&states, &marks.counts(), 0).counts(o("c1"), Some(DeviceKind::Nvr)).intact, 1);
        marks.set(nvr, Some("ch-a"), false);
        assert_eq!(idx.rollup(&states, &marks.counts(), 0).counts(o("c1"), Some(DeviceKind::Nvr)).intact, 2);
    }
}
