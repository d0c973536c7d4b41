//! The rejections log: every message a source refuses is counted
//! (`vigil_events_rejected_total{source,reason}`) and its raw bytes kept, truncated, in a
//! bounded in-memory ring so an operator can see exactly what a device sent
//! (`GET /api/v1/rejections`). Shared by sources (write) and the API (read), like metrics;
//! imports nothing but the clock and telemetry.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crate::clock::Millis;
use crate::telemetry::Metrics;

/// Most rejections kept (the oldest go first).
pub const KEEP: usize = 2_000;
/// Most raw bytes kept of one message.
pub const RAW_MAX: usize = 2_048;

#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub at: Millis,
    pub source: &'static str,
    pub reason: String,
    pub peer: String,
    pub detail: String,
    /// The message as received, lossily decoded, at most `RAW_MAX` bytes of it.
    pub raw: String,
    pub raw_len: usize,
}

#[derive(Clone)]
pub struct Rejections {
    ring: Arc<Mutex<VecDeque<Rejection>>>,
    metrics: Metrics,
}

impl Rejections {
    pub fn new(metrics: Metrics) -> Self {
        Rejections { ring: Arc::default(), metrics }
    }

    /// Counts and keeps one rejection.
    pub fn record(&self, at: Millis, source: &'static str, reason: &str, peer: String, detail: String, raw: &[u8]) {
        self.metrics.events_rejected.with_label_values(&[source, reason]).inc();
        let r = Rejection {
            at,
            source,
            reason: reason.to_owned(),
            peer,
            detail,
            raw: String::from_utf8_lossy(&raw[..raw.len().min(RAW_MAX)]).into_owned(),
            raw_len: raw.len(),
        };
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() == KEEP {
            ring.pop_front();
        }
        ring.push_back(r);
    }

    /// The most recent rejections first, filtered.
    pub fn list(&self, source: Option<&str>, reason: Option<&str>, limit: usize) -> Vec<Rejection> {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        ring.iter()
            .rev()
            .filter(|r| source.is_none_or(|s| r.source == s) && reason.is_none_or(|x| r.reason == x))
            .take(limit)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_is_bounded_and_newest_first() {
        let r = Rejections::new(Metrics::new());
        for i in 0..(KEEP + 10) {
            r.record(
                i as i64,
                "gb28181",
                if i % 2 == 0 { "even" } else { "odd" },
                "p".into(),
                String::new(),
                &vec![b'x'; RAW_MAX + 5],
            );
        }
        let all = r.list(None, None, usize::MAX);
        assert_eq!(all.len(), KEEP);
        assert_eq!(all[0].at, (KEEP + 9) as i64);
        assert_eq!(all[0].raw.len(), RAW_MAX);
        assert_eq!(all[0].raw_len, RAW_MAX + 5);
        assert!(r.list(Some("gb28181"), Some("even"), 10).iter().all(|x| x.reason == "even"));
    }
}
