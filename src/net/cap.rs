//! A connection cap for one listener: at most `total` connections at once and at most
//! `per_address` from one source address, so that one host (or one flood) cannot take the
//! descriptors every other device and the operators need. A taken `Slot` gives its place
//! back when dropped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use prometheus::{IntCounterVec, IntGaugeVec};

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The listener's share of the descriptors is in use.
    Total,
    /// This address holds its share already.
    PerAddress,
}

impl Refused {
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Total => "listener_full",
            Refused::PerAddress => "address_full",
        }
    }
}

struct Inner {
    listener: &'static str,
    total: usize,
    per_address: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
    gauge: Option<IntGaugeVec>,
    refused: Option<IntCounterVec>,
}

/// Cheap to clone: one `Arc`.
#[derive(Clone)]
pub struct ConnCap(Arc<Inner>);

impl std::fmt::Debug for ConnCap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConnCap({}: {} total, {} per address)", self.0.listener, self.0.total, self.0.per_address)
    }
}

impl ConnCap {
    /// A cap; with `metrics` it keeps `vigil_connections{listener}` and
    /// `vigil_connections_refused_total{listener,reason}`.
    pub fn new(
        listener: &'static str,
        total: usize,
        per_address: usize,
        metrics: Option<&crate::telemetry::Metrics>,
    ) -> ConnCap {
        ConnCap(Arc::new(Inner {
            listener,
            total: total.max(1),
            per_address: per_address.clamp(1, total.max(1)),
            open: Mutex::default(),
            gauge: metrics.map(|m| m.connections.clone()),
            refused: metrics.map(|m| m.connections_refused.clone()),
        }))
    }

    pub fn listener(&self) -> &'static str {
        self.0.listener
    }

    pub fn total(&self) -> usize {
        self.0.total
    }

    pub fn per_address(&self) -> usize {
        self.0.per_address
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.0.open.lock().unwrap_or_else(|p| p.into_inner()).0
    }

    /// A place for a connection from `ip`, or why not (counted).
    pub fn try_take(&self, ip: IpAddr) -> Result<Slot, Refused> {
        let mut open = self.0.open.lock().unwrap_or_else(|p| p.into_inner());
        let refused = if open.0 >= self.0.total {
            Some(Refused::Total)
        } else if open.1.get(&ip).is_some_and(|&n| n >= self.0.per_address) {
            Some(Refused::PerAddress)
        } else {
            None
        };
        if let Some(r) = refused {
            if let Some(c) = &self.0.refused {
                c.with_label_values(&[self.0.listener, r.as_str()]).inc();
            }
            return Err(r);
        }
        open.0 += 1;
        *open.1.entry(ip).or_insert(0) += 1;
        if let Some(g) = &self.0.gauge {
            g.with_label_values(&[self.0.listener]).set(open.0 as i64);
        }
        Ok(Slot { cap: self.clone(), ip })
    }
}

/// One connection's place under its listener's cap.
pub struct Slot {
    cap: ConnCap,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.cap.0.open.lock().unwrap_or_else(|p| p.into_inner());
        open.0 = open.0.saturating_sub(1);
        if let Some(n) = open.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.ip);
            }
        }
        if let Some(g) = &self.cap.0.gauge {
            g.with_label_values(&[self.cap.0.listener]).set(open.0 as i64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_cannot_take_more_than_its_share_and_places_come_back() {
        let cap = ConnCap::new("test", 4, 2, None);
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let c: IpAddr = [10, 0, 0, 3].into();
        let a1 = cap.try_take(a).expect("first");
        let _a2 = cap.try_take(a).expect("second");
        assert_eq!(cap.try_take(a).err(), Some(Refused::PerAddress));
        let _b1 = cap.try_take(b).expect("b");
        let _b2 = cap.try_take(b).expect("b");
        assert_eq!(cap.try_take(c).err(), Some(Refused::Total), "the listener is full");
        drop(a1);
        assert_eq!(cap.open(), 3);
        let _c1 = cap.try_take(c).expect("a place came back");
    }
}
