//! The only place that reads the wall clock.
//!
//! Times inside vigil are `Millis`: milliseconds since the Unix epoch, UTC, as i64, so they
//! persist as they are and compare cheaply. `now_ms()` anchors the wall clock once and then
//! advances with tokio's monotonic clock: a paused tokio runtime (`tokio::time::pause`)
//! therefore controls every timer and every "now" in tests, and a wall-clock step (NTP)
//! cannot make presence deadlines jump.

use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, FixedOffset, TimeZone, Utc};

/// Milliseconds since the Unix epoch (UTC).
pub type Millis = i64;

#[allow(clippy::disallowed_methods, clippy::disallowed_types)]
fn anchor() -> &'static (Millis, tokio::time::Instant) {
    static ANCHOR: OnceLock<(Millis, tokio::time::Instant)> = OnceLock::new();
    ANCHOR.get_or_init(|| {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as Millis).unwrap_or(0);
        (wall, tokio::time::Instant::now())
    })
}

/// Now, in milliseconds since the epoch.
pub fn now_ms() -> Millis {
    let (wall, at) = anchor();
    let elapsed = tokio::time::Instant::now().saturating_duration_since(*at);
    wall + elapsed.as_millis() as Millis
}

/// The tokio instant at which wall time `at` is reached (for sleeping until a deadline).
pub fn instant_at(at: Millis) -> tokio::time::Instant {
    let now = now_ms();
    let base = tokio::time::Instant::now();
    if at <= now {
        base
    } else {
        base + std::time::Duration::from_millis((at - now) as u64)
    }
}

/// Formats a time as RFC 3339 with the given zone's offset (API responses).
pub fn rfc3339(at: Millis, tz: &chrono_tz::Tz) -> String {
    to_datetime(at, tz).to_rfc3339_opts(chrono::SecondsFormat::Secs, false)
}

/// The time in the given zone, as a fixed-offset datetime.
pub fn to_datetime(at: Millis, tz: &chrono_tz::Tz) -> DateTime<FixedOffset> {
    let utc = Utc.timestamp_millis_opt(at).single().unwrap_or_default();
    utc.with_timezone(tz).fixed_offset()
}

/// Parses an RFC 3339 timestamp (queries).
pub fn parse_rfc3339(s: &str) -> Option<Millis> {
    DateTime::parse_from_rfc3339(s).ok().map(|d| d.timestamp_millis())
}
