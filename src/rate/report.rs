//! The daily online report (API `GET /reports/online/daily`, CLI `vigil report online`):
//! per org node and device kind, the sampled rate (mean of the day's samples), the
//! time-weighted availability (seconds online over seconds counted, per device, from the
//! transition log), the devices never online that day, and the list of devices that were
//! not online all day with their offline durations. Devices excluded from the denominator
//! are counted and said so. Reads the store; computes in memory.

use std::collections::HashMap;
use std::fmt::Write as _;

use chrono::{NaiveDate, TimeZone};
use serde::Serialize;

use super::sampling::{self, ALL_KEY};
use crate::clock::{rfc3339, Millis};
use crate::presence::{store as pstore, State};
use crate::registry::{Admission, DeviceKind, Registry};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("date: {0:?} is not YYYY-MM-DD")]
    BadDate(String),
    #[error("org: no org {0:?}")]
    NoOrg(String),
    #[error("report storage: {0}")]
    Store(#[from] sqlx::Error),
}

impl Error {
    pub fn kind(&self) -> crate::error::ErrorKind {
        match self {
            Error::BadDate(_) => crate::error::ErrorKind::InvalidInput,
            Error::NoOrg(_) => crate::error::ErrorKind::NotFound,
            Error::Store(e) => crate::db::sqlx_kind(e),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DailyReport {
    pub date: String,
    pub timezone: String,
    pub from: String,
    pub to: String,
    pub generated_at: String,
    pub org: Option<String>,
    pub online_target: f64,
    /// How the denominator was formed, in words, for the reader of the report.
    pub counting_rule: String,
    pub excluded: Excluded,
    pub rows: Vec<ReportRow>,
    pub offline: Vec<OfflineItem>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Excluded {
    pub maintenance: u64,
    pub disabled: u64,
    pub not_approved: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReportRow {
    pub org_id: Option<String>,
    pub org_name: String,
    pub org_kind: String,
    pub kind: String,
    pub devices: u64,
    pub samples: usize,
    pub sampled_rate: Option<f64>,
    /// Mean of the samples' intact rates (online and passing video quality diagnosis).
    pub sampled_intact_rate: Option<f64>,
    pub availability: Option<f64>,
    pub never_online: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct OfflineItem {
    pub device_id: String,
    pub name: String,
    pub org_id: Option<String>,
    pub org_name: String,
    pub kind: String,
    pub offline_s: i64,
    pub unknown_s: i64,
    pub online_s: i64,
    /// Seconds online over the seconds this device was counted that day.
    pub availability: Option<f64>,
    pub offline_at_end: bool,
    pub last_reason: String,
}

struct Dev {
    id: String,
    name: String,
    kind: DeviceKind,
    org_id: Option<String>,
    chain: Vec<String>,
    created_at: Millis,
}

/// The instants [from, to) of a local date in the zone.
pub fn day_bounds(date: &str, tz: &chrono_tz::Tz) -> Result<(Millis, Millis), Error> {
    let d = NaiveDate::parse_from_str(date, "%Y-%m-%d").map_err(|_| Error::BadDate(date.to_owned()))?;
    let at = |d: NaiveDate| {
        d.and_hms_opt(0, 0, 0)
            .and_then(|t| tz.from_local_datetime(&t).earliest())
            .map(|t| t.timestamp_millis())
            .ok_or_else(|| Error::BadDate(date.to_owned()))
    };
    let next = d.succ_opt().ok_or_else(|| Error::BadDate(date.to_owned()))?;
    Ok((at(d)?, at(next)?))
}

/// Builds the report for a local date, optionally for one org's subtree.
pub async fn daily(
    registry: &Registry,
    date: &str,
    org: Option<&str>,
    tz: &chrono_tz::Tz,
    online_target: f64,
    count_maintenance: bool,
    now: Millis,
) -> Result<DailyReport, Error> {
    let (from, day_end) = day_bounds(date, tz)?;
    let to = day_end.min(now).max(from);
    // What we need of the registry, taken under the lock and released before any await.
    let (devs, orgs, excluded) = {
        let cache = registry.read();
        if let Some(o) = org {
            if cache.org(o).is_none() {
                return Err(Error::NoOrg(o.to_owned()));
            }
        }
        let in_scope = |org_id: &Option<String>| match (org, org_id) {
            (None, _) => true,
            (Some(root), Some(id)) => cache.is_in_subtree(id, root),
            (Some(_), None) => false,
        };
        let mut excluded = Excluded::default();
        let mut devs = Vec::new();
        for d in cache.devices() {
            if !in_scope(&d.org_id) {
                continue;
            }
            if !d.counted(count_maintenance) {
                if d.admission != Admission::Approved {
                    excluded.not_approved += 1;
                } else if !d.enabled {
                    excluded.disabled += 1;
                } else {
                    excluded.maintenance += 1;
                }
                continue;
            }
            let chain = d
                .org_id
                .as_deref()
                .map(|o| cache.ancestors(o).into_iter().map(|a| a.id.clone()).collect())
                .unwrap_or_default();
            devs.push(Dev {
                id: d.id.clone(),
                name: d.name.clone(),
                kind: d.kind,
                org_id: d.org_id.clone(),
                chain,
                created_at: d.created_at,
            });
        }
        let orgs: HashMap<String, (String, String)> =
            cache.orgs().map(|o| (o.id.clone(), (o.name.clone(), o.kind.as_str().to_owned()))).collect();
        let scope_orgs: Vec<String> = match org {
            Some(root) => {
                let sub = cache.subtree(root);
                cache.orgs().filter(|o| sub.contains(&o.id)).map(|o| o.id.clone()).collect()
            }
            None => cache.orgs().map(|o| o.id.clone()).collect(),
        };
        (devs, (orgs, scope_orgs), excluded)
    };
    let (org_names, scope_orgs) = orgs;
    let pool = &registry.db().pool;
    let initial: HashMap<String, (State, String)> =
        pstore::states_at(pool, from).await?.into_iter().map(|(id, s, r)| (id, (s, r))).collect();
    let mut by_dev: HashMap<String, Vec<pstore::HistoryRow>> = HashMap::new();
    for t in pstore::transitions_between(pool, from, to).await? {
        by_dev.entry(t.device_id.clone()).or_default().push(t);
    }
    let samples = sampling::all_samples(pool, from, day_end).await?;

    // Per device: seconds online / offline / unknown in its window.
    #[derive(Default, Clone, Copy)]
    struct Acc {
        devices: u64,
        online_ms: i64,
        window_ms: i64,
        never_online: u64,
    }
    let mut acc: HashMap<(Option<String>, usize), Acc> = HashMap::new();
    let mut offline = Vec::new();
    for d in &devs {
        let start = from.max(d.created_at).min(to);
        let (mut state, mut reason) = initial.get(&d.id).cloned().unwrap_or((State::Unknown, "added".into()));
        let mut t0 = start;
        let mut per = [0i64; 3];
        for tr in by_dev.get(&d.id).map(Vec::as_slice).unwrap_or(&[]) {
            let at = tr.at.clamp(start, to);
            per[state as usize] += at - t0;
            t0 = at;
            state = tr.to;
            reason = tr.reason.clone();
        }
        per[state as usize] += to - t0;
        let (unknown_ms, online_ms, offline_ms) = (per[0], per[1], per[2]);
        let window = to - start;
        let never = online_ms == 0;
        let kinds = [crate::rate::ALL, d.kind.index()];
        let mut keys: Vec<Option<String>> = d.chain.iter().cloned().map(Some).collect();
        keys.push(None);
        for k in keys {
            for kind in kinds {
                let a = acc.entry((k.clone(), kind)).or_default();
                a.devices += 1;
                a.online_ms += online_ms;
                a.window_ms += window;
                a.never_online += u64::from(never);
            }
        }
        if online_ms < window || window == 0 {
            offline.push(OfflineItem {
                device_id: d.id.clone(),
                name: d.name.clone(),
                org_id: d.org_id.clone(),
                org_name: d.org_id.as_ref().and_then(|o| org_names.get(o)).map(|n| n.0.clone()).unwrap_or_default(),
                kind: d.kind.as_str().into(),
                offline_s: offline_ms / 1000,
                unknown_s: unknown_ms / 1000,
                online_s: online_ms / 1000,
                availability: (window > 0).then(|| online_ms as f64 / window as f64),
                offline_at_end: state != State::Online,
                last_reason: reason,
            });
        }
    }
    offline.sort_by(|a, b| {
        (b.offline_s + b.unknown_s).cmp(&(a.offline_s + a.unknown_s)).then(a.device_id.cmp(&b.device_id))
    });

    // Sampled rate: mean of the samples' rates.
    let mut sampled: HashMap<(String, String), (f64, f64, usize)> = HashMap::new();
    for (o, k, s) in samples {
        if s.total > 0 {
            let e = sampled.entry((o, k)).or_default();
            e.0 += s.online as f64 / s.total as f64;
            e.1 += s.intact as f64 / s.total as f64;
            e.2 += 1;
        }
    }
    let make_row = |org_id: Option<&String>, kind: usize| -> Option<ReportRow> {
        let a = acc.get(&(org_id.cloned(), kind)).copied()?;
        let kind_name =
            if kind == crate::rate::ALL { "all".to_string() } else { DeviceKind::ALL[kind].as_str().to_string() };
        let sample_key = (
            org_id.cloned().unwrap_or_else(|| ALL_KEY.to_owned()),
            if kind == crate::rate::ALL { ALL_KEY.to_owned() } else { kind_name.clone() },
        );
        let (sum, sum_intact, n) = sampled.get(&sample_key).copied().unwrap_or((0.0, 0.0, 0));
        let (org_name, org_kind) = match org_id {
            Some(id) => org_names.get(id).cloned().unwrap_or_default(),
            None => ("(gateway)".to_owned(), "gateway".to_owned()),
        };
        Some(ReportRow {
            org_id: org_id.cloned(),
            org_name,
            org_kind,
            kind: kind_name,
            devices: a.devices,
            samples: n,
            sampled_rate: (n > 0).then(|| sum / n as f64),
            sampled_intact_rate: (n > 0).then(|| sum_intact / n as f64),
            availability: (a.window_ms > 0).then(|| a.online_ms as f64 / a.window_ms as f64),
            never_online: a.never_online,
        })
    };
    let mut rows = Vec::new();
    let kinds: Vec<usize> =
        std::iter::once(crate::rate::ALL).chain(DeviceKind::ALL.iter().map(|k| k.index())).collect();
    if org.is_none() {
        rows.extend(kinds.iter().filter_map(|k| make_row(None, *k)));
    }
    for o in &scope_orgs {
        rows.extend(kinds.iter().filter_map(|k| make_row(Some(o), *k)));
    }
    Ok(DailyReport {
        date: date.to_owned(),
        timezone: tz.name().to_owned(),
        from: rfc3339(from, tz),
        to: rfc3339(to, tz),
        generated_at: rfc3339(now, tz),
        org: org.map(str::to_owned),
        online_target,
        counting_rule: if count_maintenance {
            "devices that are enabled and approved, including those in maintenance".into()
        } else {
            "devices that are enabled, approved and not in maintenance".into()
        },
        excluded,
        rows,
        offline,
    })
}

/// One CSV cell. Text that a spreadsheet would take for a formula (`=`, `+`, `-`, `@`, a tab
/// or a carriage return first: a device name such as `=HYPERLINK(...)`) is written with a
/// leading `'`, so it opens as the text it is (OWASP's CSV injection advice).
fn csv_field(s: &str) -> String {
    let guarded;
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        guarded = format!("'{s}");
        guarded.as_str()
    } else {
        s
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn pct(v: Option<f64>) -> String {
    v.map(|r| format!("{:.2}", r * 100.0)).unwrap_or_default()
}

impl DailyReport {
    /// The report as CSV: the summary table, a blank line, then the offline list.
    pub fn to_csv(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# vigil daily online report {} ({}), {}; excluded: {} in maintenance, {} disabled, {} not approved",
            self.date,
            self.timezone,
            self.counting_rule,
            self.excluded.maintenance,
            self.excluded.disabled,
            self.excluded.not_approved
        );
        out.push_str("org_id,org_name,org_kind,kind,devices,samples,sampled_rate_pct,availability_pct,never_online,sampled_intact_rate_pct\n");
        for r in &self.rows {
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{},{},{},{}",
                csv_field(r.org_id.as_deref().unwrap_or("")),
                csv_field(&r.org_name),
                r.org_kind,
                r.kind,
                r.devices,
                r.samples,
                pct(r.sampled_rate),
                pct(r.availability),
                r.never_online,
                pct(r.sampled_intact_rate)
            );
        }
        out.push('\n');
        out.push_str("device_id,name,org_id,org_name,kind,offline_s,unknown_s,online_s,availability_pct,offline_at_end,last_reason\n");
        for o in &self.offline {
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{},{},{},{},{}",
                csv_field(&o.device_id),
                csv_field(&o.name),
                csv_field(o.org_id.as_deref().unwrap_or("")),
                csv_field(&o.org_name),
                o.kind,
                o.offline_s,
                o.unknown_s,
                o.online_s,
                pct(o.availability),
                o.offline_at_end,
                csv_field(&o.last_reason)
            );
        }
        out
    }
}
