//! A profile's own test vectors: each `[[tests]]` entry is a message (text or base64) on a
//! route, and what it must map to. Run by `make test` for every shipped profile, by
//! `vigil check-config`, and on every load: a profile whose vectors fail is refused.
//! Expectations are subsets of the mapped record's JSON view (`view`), so a vector names
//! only what it cares about; `occurred_at` compares as an instant.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use super::map::{map, Made, Outcome};
use super::Profile;
use crate::clock::Millis;

#[derive(Debug, Clone, PartialEq)]
pub struct VectorFailure {
    pub profile: String,
    pub test: String,
    pub message: String,
}

impl std::fmt::Display for VectorFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "profile {} test {:?}: {}", self.profile, self.test, self.message)
    }
}

fn rfc3339(ms: Millis) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map_or_else(|| ms.to_string(), |d| d.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// The JSON view of an outcome that vectors are written against.
pub fn view(o: &Outcome) -> Value {
    match o {
        Outcome::Record(m) => {
            let (kind, body) = match &m.made {
                Made::Event(b) => {
                    let mut v = serde_json::to_value(b).unwrap_or(Value::Null);
                    if let Some(obj) = v.as_object_mut() {
                        obj.remove("kind");
                    }
                    (b.kind().as_str(), v)
                }
                Made::Heartbeat => ("heartbeat", Value::Null),
            };
            json!({
                "kind": kind,
                "device": m.device,
                "site": m.site,
                "name": m.name,
                "model": m.model,
                "firmware": m.firmware,
                "occurred_at": rfc3339(m.occurred_at),
                "occurred_at_raw": m.occurred_at_raw,
                "time_source": m.time_source,
                "clock_reset": m.clock_reset,
                "seq": m.seq,
                "dedup_key": m.dedup_key,
                "offline_replay": m.offline_replay,
                "body": body,
                "media": m.images.iter().map(|i| json!({"role": i.role, "bytes": i.bytes.len()})).collect::<Vec<_>>(),
                "attrs": m.attrs,
                "warnings": m.warnings.iter().map(|w| w.reason).collect::<Vec<_>>(),
            })
        }
        Outcome::Dropped { reason, .. } => json!({ "drop": reason }),
        Outcome::Rejected { refusal, .. } => json!({ "reject": refusal.reason, "detail": refusal.detail }),
    }
}

/// Whether `want` is a subset of `got`; `Err` names the first difference.
fn subset(want: &Value, got: &Value, at: &str) -> Result<(), String> {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, wv) in w {
                let gv = g.get(k).unwrap_or(&Value::Null);
                let here = format!("{at}.{k}");
                if k == "occurred_at" {
                    if let (Some(a), Some(b)) = (wv.as_str(), gv.as_str()) {
                        let pa = DateTime::parse_from_rfc3339(a)
                            .map_err(|e| format!("{here}: expected value {a:?}: {e}"))?;
                        let pb = DateTime::parse_from_rfc3339(b).map_err(|e| format!("{here}: {e}"))?;
                        if pa != pb {
                            return Err(format!("{here}: expected {a}, got {b}"));
                        }
                        continue;
                    }
                }
                subset(wv, gv, &here)?;
            }
            Ok(())
        }
        (Value::Array(w), Value::Array(g)) => {
            if w.len() != g.len() {
                return Err(format!("{at}: expected {} items, got {}: {got}", w.len(), g.len()));
            }
            w.iter().zip(g).enumerate().try_for_each(|(i, (a, b))| subset(a, b, &format!("{at}[{i}]")))
        }
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => Ok(()),
        _ if want == got => Ok(()),
        _ => Err(format!("{at}: expected {want}, got {got}")),
    }
}

/// Runs every vector of `p`; empty when all pass.
pub fn run_vectors(p: &Profile) -> Vec<VectorFailure> {
    let mut out = Vec::new();
    for t in &p.tests {
        if let Err(message) = run_one(p, t) {
            out.push(VectorFailure { profile: p.id.clone(), test: t.name.clone(), message });
        }
    }
    out
}

fn run_one(p: &Profile, t: &super::spec::TestSpec) -> Result<(), String> {
    let payload: Vec<u8> = match (&t.input, &t.input_base64) {
        (Some(s), None) => s.as_bytes().to_vec(),
        (None, Some(b)) => super::expr::base64_bytes(b).ok_or("input_base64 is not base64")?,
        _ => return Err("give exactly one of input or input_base64".into()),
    };
    let captures = p
        .routes
        .iter()
        .find_map(|r| r.pattern.matches(&t.route))
        .ok_or_else(|| format!("route {:?} matches none of the profile's routes", t.route))?;
    let want: Vec<Value> = t.expect.iter().map(|v| serde_json::to_value(v).unwrap_or(Value::Null)).collect();
    let received_at = match &t.received_at {
        Some(s) => DateTime::parse_from_rfc3339(s).map_err(|e| format!("received_at {s:?}: {e}"))?.timestamp_millis(),
        None => want
            .first()
            .and_then(|w| w.get("occurred_at"))
            .and_then(Value::as_str)
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map_or(1_717_200_000_000, |d| d.timestamp_millis() + 1_000),
    };
    let got: Vec<Value> = match map(p, &captures, &payload, received_at) {
        Ok(outcomes) => outcomes.iter().map(view).collect(),
        Err(r) => vec![json!({ "reject": r.reason, "detail": r.detail })],
    };
    if want.is_empty() {
        return Err(format!("no expectations; the message maps to {}", Value::Array(got)));
    }
    subset(&Value::Array(want), &Value::Array(got.clone()), "$")
        .map_err(|e| format!("{e}\n  whole result: {}", Value::Array(got)))
}
