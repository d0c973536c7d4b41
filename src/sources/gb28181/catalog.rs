//! Catalog assembly: a device answers one `Query/Catalog` with as many `Response/Catalog`
//! messages as its channels need (`SumNum` in all, a few items each), possibly out of order,
//! duplicated or with parts lost. `Assemblies` collects the parts per (device, SN) and says
//! when a catalog is complete (every `SumNum` item seen: it replaces the channel list) or
//! when its time is up (a partial catalog only adds and updates the channels it mentions;
//! it never deletes one, unlike wvp #1425). Pure: time comes in as `now`.

use std::collections::HashMap;

use crate::clock::Millis;
use crate::protocol::manscdp::{CatalogItem, CatalogResponse};

/// How long after its last part an incomplete catalog waits for the rest.
pub const PART_TIMEOUT_MS: Millis = 15_000;
/// Most catalogs assembled at once, and most items held across all of them (a platform's
/// whole tree fits; a flood of bogus parts cannot grow memory past it).
const MAX_ASSEMBLIES: usize = 1_000;
const MAX_ITEMS: usize = 200_000;

/// A catalog ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct Assembled {
    pub device_id: String,
    pub items: Vec<CatalogItem>,
    /// Every item arrived: the list replaces the stored one. Otherwise it is merged.
    pub complete: bool,
}

#[derive(Debug)]
struct Assembly {
    sum_num: usize,
    items: HashMap<String, CatalogItem>,
    last_part_at: Millis,
}

#[derive(Debug, Default)]
pub struct Assemblies {
    open: HashMap<(String, u64), Assembly>,
    /// Items held in all open assemblies.
    held: usize,
}

impl Assemblies {
    /// Adds one part; returns the catalog if this part completed it.
    pub fn add(&mut self, from_device: &str, part: CatalogResponse, now: Millis) -> Option<Assembled> {
        let sn = part.sn.unwrap_or(0);
        let key = (from_device.to_owned(), sn);
        if !self.open.contains_key(&key) && self.open.len() >= MAX_ASSEMBLIES {
            return None;
        }
        let a = self.open.entry(key.clone()).or_insert_with(|| Assembly {
            sum_num: part.sum_num,
            items: HashMap::new(),
            last_part_at: now,
        });
        a.sum_num = a.sum_num.max(part.sum_num);
        a.last_part_at = now;
        for item in part.items {
            let room = self.held < MAX_ITEMS || a.items.contains_key(&item.device_id);
            if room && a.items.insert(item.device_id.clone(), item).is_none() {
                self.held += 1;
            }
        }
        if a.items.len() >= a.sum_num {
            let a = self.open.remove(&key)?;
            self.held -= a.items.len();
            return Some(Assembled { device_id: key.0, items: sorted(a.items), complete: true });
        }
        None
    }

    /// Catalogs whose parts stopped arriving: handed over as partial.
    pub fn expire(&mut self, now: Millis) -> Vec<Assembled> {
        let done: Vec<(String, u64)> =
            self.open.iter().filter(|(_, a)| now - a.last_part_at >= PART_TIMEOUT_MS).map(|(k, _)| k.clone()).collect();
        done.into_iter()
            .filter_map(|k| {
                let a = self.open.remove(&k)?;
                self.held -= a.items.len();
                Some(Assembled { device_id: k.0, items: sorted(a.items), complete: false })
            })
            .collect()
    }
}

fn sorted(items: HashMap<String, CatalogItem>) -> Vec<CatalogItem> {
    let mut v: Vec<CatalogItem> = items.into_values().collect();
    v.sort_by(|a, b| a.device_id.cmp(&b.device_id));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(sn: u64, sum: usize, ids: &[u32]) -> CatalogResponse {
        CatalogResponse {
            sn: Some(sn),
            device_id: "nvr".into(),
            sum_num: sum,
            items: ids
                .iter()
                .map(|i| CatalogItem { device_id: format!("ch{i:03}"), status_on: true, ..Default::default() })
                .collect(),
        }
    }

    #[test]
    fn parts_out_of_order_with_duplicates_complete_the_catalog() {
        let mut a = Assemblies::default();
        assert!(a.add("nvr", part(1, 5, &[3, 4]), 0).is_none());
        assert!(a.add("nvr", part(1, 5, &[3, 4]), 1).is_none(), "a duplicate part adds nothing");
        assert!(a.add("nvr", part(2, 9, &[0]), 1).is_none(), "another SN is another catalog");
        let done = a.add("nvr", part(1, 5, &[0, 1, 2]), 2).expect("complete");
        assert!(done.complete);
        assert_eq!(
            done.items.iter().map(|i| i.device_id.as_str()).collect::<Vec<_>>(),
            ["ch000", "ch001", "ch002", "ch003", "ch004"]
        );
    }

    #[test]
    fn a_catalog_missing_parts_is_handed_over_as_partial_after_the_timeout() {
        let mut a = Assemblies::default();
        a.add("nvr", part(7, 100, &[1, 2]), 0);
        assert!(a.expire(PART_TIMEOUT_MS - 1).is_empty());
        let out = a.expire(PART_TIMEOUT_MS);
        assert_eq!(out.len(), 1);
        assert!(!out[0].complete);
        assert_eq!(out[0].items.len(), 2);
        assert_eq!(a.held, 0);
    }

    #[test]
    fn items_held_across_all_catalogs_are_bounded() {
        let mut a = Assemblies::default();
        for sn in 0..300u64 {
            let ids: Vec<u32> = (0..1000).collect();
            let mut p = part(sn, usize::MAX, &[]);
            p.items =
                ids.iter().map(|i| CatalogItem { device_id: format!("s{sn}c{i}"), ..Default::default() }).collect();
            a.add("nvr", p, 0);
        }
        assert_eq!(a.held, MAX_ITEMS);
        assert_eq!(a.open.values().map(|x| x.items.len()).sum::<usize>(), MAX_ITEMS);
    }
}
