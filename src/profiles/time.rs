//! Device time as vendors send it: RFC 3339 with or without an offset, `yyyyMMddHHmmss` and
//! other strftime layouts with no zone, epoch seconds, milliseconds or microseconds (as
//! numbers or strings), Vzenith-style `Timeval {sec, usec}` objects; and the judgement of
//! whether to believe it (sanity window, clock reset after power loss, offline replay).

use chrono::{DateTime, FixedOffset, NaiveDateTime, TimeZone};
use serde_json::Value;

use crate::clock::Millis;
use crate::event::TimeSource;

/// How a profile's time field is written.
#[derive(Debug, Clone, PartialEq)]
pub enum Format {
    Rfc3339,
    EpochS,
    EpochMs,
    EpochUs,
    /// `{ "sec": 1716001203, "usec": 412000 }`.
    Timeval,
    /// A chrono strftime layout, e.g. `%Y%m%d%H%M%S`; the zone comes from the profile.
    Pattern(String),
    /// Guess from the shape: RFC 3339 text, 14 digits, or an epoch number by magnitude.
    Auto,
}

impl Format {
    pub fn parse(s: &str) -> Result<Format, String> {
        Ok(match s {
            "rfc3339" | "iso8601" => Format::Rfc3339,
            "epoch_s" => Format::EpochS,
            "epoch_ms" => Format::EpochMs,
            "epoch_us" => Format::EpochUs,
            "timeval" => Format::Timeval,
            "auto" => Format::Auto,
            p if p.contains('%') => Format::Pattern(p.to_owned()),
            other => {
                return Err(format!(
                    "unknown time format `{other}` (rfc3339, epoch_s, epoch_ms, epoch_us, timeval, auto or a strftime pattern)"
                ))
            }
        })
    }
}

/// The zone for times written without one.
#[derive(Debug, Clone, PartialEq)]
pub enum Zone {
    Fixed(FixedOffset),
    Named(chrono_tz::Tz),
}

impl Zone {
    pub fn parse(s: &str) -> Result<Zone, String> {
        if let Ok(dt) = DateTime::parse_from_rfc3339(&format!("2000-01-01T00:00:00{s}")) {
            return Ok(Zone::Fixed(*dt.offset()));
        }
        s.parse::<chrono_tz::Tz>()
            .map(Zone::Named)
            .map_err(|_| format!("unknown zone `{s}` (an offset like +08:00 or an IANA name)"))
    }

    fn local_to_ms(&self, n: &NaiveDateTime) -> Option<Millis> {
        match self {
            Zone::Fixed(o) => o.from_local_datetime(n).single().map(|d| d.timestamp_millis()),
            Zone::Named(z) => z.from_local_datetime(n).earliest().map(|d| d.timestamp_millis()),
        }
    }
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Reads a device time; `Err` says why it could not be read.
pub fn read(v: &Value, format: &Format, zone: &Zone) -> Result<Millis, String> {
    let text = || v.as_str().map(str::trim).ok_or_else(|| format!("expected time text, got {v}"));
    let ms = match format {
        Format::Rfc3339 => {
            let t = text()?;
            match DateTime::parse_from_rfc3339(t) {
                Ok(d) => Some(d.timestamp_millis()),
                Err(_) => {
                    // No offset: "2024-05-18T08:12:31" or with a space.
                    let n = NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f")
                        .or_else(|_| NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f"))
                        .map_err(|e| format!("`{t}` is not RFC 3339: {e}"))?;
                    zone.local_to_ms(&n)
                }
            }
        }
        Format::EpochS => number(v).map(|s| (s * 1000.0) as Millis),
        Format::EpochMs => number(v).map(|s| s as Millis),
        Format::EpochUs => number(v).map(|s| (s / 1000.0) as Millis),
        Format::Timeval => {
            let sec = v.get("sec").and_then(number).ok_or_else(|| format!("timeval without `sec`: {v}"))?;
            let usec = v.get("usec").and_then(number).unwrap_or(0.0);
            Some((sec * 1000.0 + usec / 1000.0) as Millis)
        }
        Format::Pattern(p) => {
            let t = text()?;
            let n = NaiveDateTime::parse_from_str(t, p).map_err(|e| format!("`{t}` does not fit `{p}`: {e}"))?;
            zone.local_to_ms(&n)
        }
        Format::Auto => return auto(v, zone),
    };
    ms.ok_or_else(|| format!("cannot read a time from {v}"))
}

fn auto(v: &Value, zone: &Zone) -> Result<Millis, String> {
    if v.get("sec").is_some() {
        return read(v, &Format::Timeval, zone);
    }
    if let Some(t) = v.as_str().map(str::trim) {
        if t.len() == 14 && t.bytes().all(|b| b.is_ascii_digit()) {
            return read(v, &Format::Pattern("%Y%m%d%H%M%S".into()), zone);
        }
        if t.contains('-') {
            return read(v, &Format::Rfc3339, zone);
        }
    }
    let n = number(v).ok_or_else(|| format!("cannot read a time from {v}"))?;
    // By magnitude: seconds until 2286, then ms, then µs.
    let f = if n < 1e10 {
        Format::EpochS
    } else if n < 1e13 {
        Format::EpochMs
    } else {
        Format::EpochUs
    };
    read(v, &f, zone)
}

/// When to believe a device clock.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// Later than receipt by more than this: not believed. Default 2 min.
    pub max_future_ms: Millis,
    /// Earlier than receipt by more than this: not believed. Default 30 days (offline caches
    /// hold weeks).
    pub max_past_ms: Millis,
    /// Before this instant the device clock has reset (power loss). Default 2015-01-01.
    pub clock_reset_before_ms: Millis,
    /// Older than this at receipt: an offline replay (no live alarm). Default 5 min.
    pub replay_after_ms: Millis,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            max_future_ms: 120_000,
            max_past_ms: 30 * 86_400_000,
            clock_reset_before_ms: 1_420_070_400_000,
            replay_after_ms: 300_000,
        }
    }
}

/// The verdict on one device time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Judged {
    pub occurred_at: Millis,
    pub source: TimeSource,
    /// The device's clock was before `clock_reset_before`.
    pub clock_reset: bool,
    /// Old enough at receipt to be a replay from the device's offline store.
    pub late: bool,
}

pub fn judge(device: Option<Millis>, received_at: Millis, rules: &Rules) -> Judged {
    match device {
        None => Judged { occurred_at: received_at, source: TimeSource::Gateway, clock_reset: false, late: false },
        Some(t) if t < rules.clock_reset_before_ms => {
            Judged { occurred_at: received_at, source: TimeSource::Corrected, clock_reset: true, late: false }
        }
        Some(t)
            if t > received_at.saturating_add(rules.max_future_ms)
                || t < received_at.saturating_sub(rules.max_past_ms) =>
        {
            Judged { occurred_at: received_at, source: TimeSource::Corrected, clock_reset: false, late: false }
        }
        Some(t) => Judged {
            occurred_at: t,
            source: TimeSource::Device,
            clock_reset: false,
            late: received_at.saturating_sub(t) > rules.replay_after_ms,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cst() -> Zone {
        Zone::parse("+08:00").expect("zone")
    }

    #[test]
    fn every_vendor_shape_reads_to_the_same_instant() {
        // 2024-05-18T11:00:03.412+08:00
        let want = 1_716_001_203_412;
        let z = cst();
        assert_eq!(read(&json!("2024-05-18T11:00:03.412+08:00"), &Format::Rfc3339, &z), Ok(want));
        assert_eq!(read(&json!("2024-05-18T03:00:03.412Z"), &Format::Rfc3339, &z), Ok(want));
        assert_eq!(read(&json!("2024-05-18 11:00:03.412"), &Format::Rfc3339, &z), Ok(want), "no zone: profile's");
        assert_eq!(read(&json!(1_716_001_203), &Format::EpochS, &z), Ok(want - 412));
        assert_eq!(read(&json!("1716001203412"), &Format::EpochMs, &z), Ok(want));
        assert_eq!(read(&json!("1716001203412000"), &Format::EpochUs, &z), Ok(want));
        assert_eq!(read(&json!({"sec": 1716001203, "usec": 412000}), &Format::Timeval, &z), Ok(want));
        assert_eq!(read(&json!("20240518110003"), &Format::Pattern("%Y%m%d%H%M%S".into()), &z), Ok(want - 412));
        let sh = Zone::parse("Asia/Shanghai").expect("iana");
        assert_eq!(read(&json!("20240518110003"), &Format::Auto, &sh), Ok(want - 412));
        assert_eq!(read(&json!(1_716_001_203_412_i64), &Format::Auto, &z), Ok(want));
        assert_eq!(read(&json!(1_716_001_203), &Format::Auto, &z), Ok(want - 412));
        assert!(read(&json!("18/05/2024"), &Format::Rfc3339, &z).is_err());
        assert!(read(&json!(null), &Format::EpochS, &z).is_err());
        assert!(Format::parse("weird").is_err());
        assert!(Zone::parse("Mars/Olympus").is_err());
    }

    #[test]
    fn judgement_believes_sane_clocks_and_flags_resets_and_replays() {
        let r = Rules::default();
        let now = 1_716_001_203_000;
        assert_eq!(judge(Some(now - 1_000), now, &r).source, TimeSource::Device);
        let replay = judge(Some(now - 3 * 86_400_000), now, &r);
        assert!(replay.late && replay.source == TimeSource::Device);
        let reset = judge(Some(946_684_800_000), now, &r);
        assert!(reset.clock_reset && reset.source == TimeSource::Corrected && reset.occurred_at == now);
        assert_eq!(judge(Some(now + 3_600_000), now, &r).source, TimeSource::Corrected);
        assert_eq!(judge(None, now, &r).source, TimeSource::Gateway);
        // Windows a profile makes enormous do not overflow.
        let wide = Rules { max_future_ms: i64::MAX, max_past_ms: i64::MAX, ..Rules::default() };
        assert_eq!(judge(Some(now + 86_400_000), now, &wide).source, TimeSource::Device);
        assert_eq!(judge(Some(i64::MIN / 2), now, &wide).source, TimeSource::Corrected);
    }
}
