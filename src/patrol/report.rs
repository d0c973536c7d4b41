//! The patrol part of the daily report: the rounds that started that day (when, what
//! triggered them, counts by outcome) and the channels of the day's last round that were not
//! ok, with the fault or the reason and the snapshot — what a duty officer prints.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::{store, Item};
use crate::clock::{rfc3339, Millis};
use crate::registry::Registry;

#[derive(Debug, Clone, Serialize)]
pub struct DayPatrol {
    pub rounds: Vec<RoundLine>,
    /// The day's last round's channels that were not ok (in the report's org, when one).
    pub not_ok: Vec<ItemLine>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RoundLine {
    pub id: String,
    pub trigger: String,
    pub scope: Option<String>,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub total: usize,
    pub counts: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ItemLine {
    pub device_id: String,
    pub channel_id: String,
    pub name: Option<String>,
    pub org_id: Option<String>,
    pub at: String,
    pub outcome: String,
    pub faults: Vec<String>,
    pub error: Option<String>,
    pub image: Option<String>,
}

/// The patrol of `[from, to)` (the report's day), limited to `org`'s subtree when given.
pub async fn day(
    registry: &Registry,
    from: Millis,
    to: Millis,
    org: Option<&str>,
    tz: &chrono_tz::Tz,
) -> Result<DayPatrol, sqlx::Error> {
    let db = registry.db();
    let rounds = store::rounds_between(db, from, to).await?;
    let not_ok: Vec<Item> = match rounds.iter().rev().find(|r| r.ended_at.is_some()) {
        Some(last) => store::items(db, &last.id).await?.into_iter().filter(|i| i.outcome != "ok").collect(),
        None => Vec::new(),
    };
    let not_ok = match org {
        Some(root) => {
            let cache = registry.read();
            not_ok.into_iter().filter(|i| super::in_org(&cache, i.org_id.as_deref(), root)).collect()
        }
        None => not_ok,
    };
    Ok(DayPatrol {
        rounds: rounds
            .into_iter()
            .map(|r| RoundLine {
                id: r.id,
                trigger: r.trigger,
                scope: r.scope,
                started_at: rfc3339(r.started_at, tz),
                ended_at: r.ended_at.map(|t| rfc3339(t, tz)),
                total: r.total,
                counts: r.counts,
            })
            .collect(),
        not_ok: not_ok
            .into_iter()
            .map(|i| ItemLine {
                at: rfc3339(i.at, tz),
                device_id: i.device_id,
                channel_id: i.channel_id,
                name: i.name,
                org_id: i.org_id,
                outcome: i.outcome,
                faults: i.faults,
                error: i.error,
                image: i.image,
            })
            .collect(),
    })
}

impl DayPatrol {
    /// The CSV section appended to the daily report's CSV.
    pub fn to_csv(&self) -> String {
        let mut out = String::from("\n# patrol rounds\nround_id,trigger,scope,started_at,ended_at,channels,outcomes\n");
        for r in &self.rounds {
            let outcomes: Vec<String> = r.counts.iter().map(|(k, n)| format!("{k}={n}")).collect();
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{}",
                r.id,
                r.trigger,
                field(r.scope.as_deref().unwrap_or("all")),
                r.started_at,
                r.ended_at.as_deref().unwrap_or(""),
                r.total,
                field(&outcomes.join(" "))
            );
        }
        out.push_str("\n# patrol: channels not ok in the day's last round\ndevice_id,channel_id,name,org_id,at,outcome,faults,error,image\n");
        for i in &self.not_ok {
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{},{},{}",
                field(&i.device_id),
                field(&i.channel_id),
                field(i.name.as_deref().unwrap_or("")),
                field(i.org_id.as_deref().unwrap_or("")),
                i.at,
                i.outcome,
                field(&i.faults.join(" ")),
                field(i.error.as_deref().unwrap_or("")),
                i.image.as_deref().unwrap_or("")
            );
        }
        out
    }
}

/// A CSV field, quoted when it holds a separator, a quote or a line break; a leading `=`,
/// `+`, `-` or `@` is defused (spreadsheet formula injection from a device-supplied name).
fn field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) { format!("'{s}") } else { s.to_owned() };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_from_devices_cannot_break_the_file_or_run_as_formulas() {
        assert_eq!(field("古田一路口"), "古田一路口");
        assert_eq!(field("a,b"), "\"a,b\"");
        assert_eq!(field("say \"hi\"\n"), "\"say \"\"hi\"\"\n\"");
        assert_eq!(field("=cmd()"), "'=cmd()");
    }
}
