//! Two guards the device ports share. `FailureLimit`: an address that fails authentication
//! `max` times within a window is refused unheard until the window passes (password guessing
//! at line rate becomes five guesses a minute). `Hush`: a log line that a flood would repeat
//! thousands of times is written once, then as one summary with a count per interval. Pure:
//! time comes in as `now`.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::clock::Millis;

/// Entries past which the failure map is swept of stale ones.
const SWEEP_AT: usize = 50_000;

/// Failed authentications per address.
#[derive(Debug)]
pub struct FailureLimit {
    max: u32,
    window_ms: Millis,
    seen: HashMap<IpAddr, (u32, Millis)>,
}

impl FailureLimit {
    pub fn new(max: u32, window_ms: Millis) -> FailureLimit {
        FailureLimit { max, window_ms, seen: HashMap::new() }
    }

    /// Counts a failure from `ip`.
    pub fn failed(&mut self, ip: IpAddr, now: Millis) {
        if self.seen.len() >= SWEEP_AT {
            let window = self.window_ms;
            self.seen.retain(|_, (_, since)| now - *since < window);
        }
        let e = self.seen.entry(ip).or_insert((0, now));
        if now - e.1 >= self.window_ms {
            *e = (0, now);
        }
        e.0 = e.0.saturating_add(1);
    }

    /// Whether `ip` is refused unheard now.
    pub fn limited(&self, ip: IpAddr, now: Millis) -> bool {
        self.seen.get(&ip).is_some_and(|(n, since)| *n >= self.max && now - *since < self.window_ms)
    }

    /// Addresses tracked (bounded by the sweep).
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// One kind of log line under a flood: `tick` says whether to write it now, and how many
/// like it were held back since the last one written.
#[derive(Debug)]
pub struct Hush {
    every_ms: Millis,
    last: Option<Millis>,
    held: u64,
}

impl Hush {
    pub fn new(every_ms: Millis) -> Hush {
        Hush { every_ms, last: None, held: 0 }
    }

    /// `Some(held)` when the line is to be written now (with the count of lines held back
    /// since the previous one), `None` when it is held back.
    pub fn tick(&mut self, now: Millis) -> Option<u64> {
        match self.last {
            Some(t) if now - t < self.every_ms => {
                self.held += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held))
            }
        }
    }
}

/// A `Hush` behind a lock, for handlers that share one.
#[derive(Debug)]
pub struct SharedHush(std::sync::Mutex<Hush>);

impl SharedHush {
    pub fn new(every_ms: Millis) -> SharedHush {
        SharedHush(std::sync::Mutex::new(Hush::new(every_ms)))
    }

    pub fn tick(&self, now: Millis) -> Option<u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).tick(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_limited_after_max_failures_until_the_window_passes() {
        let mut f = FailureLimit::new(5, 60_000);
        let ip: IpAddr = [10, 0, 0, 9].into();
        for i in 0..4 {
            f.failed(ip, i);
        }
        assert!(!f.limited(ip, 10));
        f.failed(ip, 10);
        assert!(f.limited(ip, 11));
        assert!(!f.limited([10, 0, 0, 8].into(), 11), "another address is not");
        assert!(!f.limited(ip, 60_001), "the window passed");
        f.failed(ip, 60_002);
        assert!(!f.limited(ip, 60_003), "a new window starts from one");
    }

    #[test]
    fn a_flood_of_lines_becomes_one_per_interval_with_the_count() {
        let mut h = Hush::new(10_000);
        assert_eq!(h.tick(0), Some(0));
        for t in 1..10_000 {
            assert_eq!(h.tick(t), None);
        }
        assert_eq!(h.tick(10_000), Some(9_999));
        assert_eq!(h.tick(10_001), None);
    }
}
