//! The device CSV import of API.md (`id,name,kind,protocol,org_id,rtsp_url,profile`):
//! all rows or none, every bad row reported with its line (the header is line 1) and field.
//! Parsing and checking are pure; the `Registry` writes the accepted rows in one transaction.

use std::collections::HashMap;

use serde::Serialize;

use super::{Admission, DeviceKind, NewDevice, Protocol, Registry};

/// The columns, in the order API.md gives them.
pub const COLUMNS: [&str; 7] = ["id", "name", "kind", "protocol", "org_id", "rtsp_url", "profile"];

/// Most problems listed in one answer; the count says how many there were in all.
const MAX_LISTED: usize = 10_000;

/// One bad cell.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RowProblem {
    pub line: u64,
    pub field: String,
    pub message: String,
}

/// Why a CSV was refused as a whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportError {
    pub message: String,
    pub rows: Vec<RowProblem>,
}

impl std::fmt::Display for ImportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)?;
        for r in self.rows.iter().take(20) {
            write!(f, "\n  line {}: {}: {}", r.line, r.field, r.message)?;
        }
        if self.rows.len() > 20 {
            write!(f, "\n  ... and {} more", self.rows.len() - 20)?;
        }
        Ok(())
    }
}

/// Parses and checks a CSV against the registry; returns the devices to write.
pub fn parse(registry: &Registry, body: &[u8]) -> Result<Vec<NewDevice>, ImportError> {
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body); // Excel's UTF-8 BOM
    let mut reader = csv::ReaderBuilder::new().has_headers(true).flexible(true).trim(csv::Trim::All).from_reader(body);
    let header = reader
        .headers()
        .map_err(|e| ImportError { message: format!("cannot read the header row: {e}"), rows: vec![] })?
        .clone();
    let mut col: HashMap<&str, usize> = HashMap::new();
    let mut rows = Vec::new();
    for (i, h) in header.iter().enumerate() {
        match COLUMNS.iter().find(|c| **c == h) {
            Some(c) => {
                col.insert(c, i);
            }
            None => rows.push(RowProblem {
                line: 1,
                field: h.to_owned(),
                message: format!("unknown column; the columns are {}", COLUMNS.join(",")),
            }),
        }
    }
    for required in ["id", "kind", "protocol"] {
        if !col.contains_key(required) {
            rows.push(RowProblem { line: 1, field: required.into(), message: "required column is missing".into() });
        }
    }
    if !rows.is_empty() {
        return Err(ImportError {
            message: "the header row is not id,name,kind,protocol,org_id,rtsp_url,profile".into(),
            rows,
        });
    }
    let mut out = Vec::new();
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut total_problems = 0usize;
    let mut push = |rows: &mut Vec<RowProblem>, p: RowProblem| {
        total_problems += 1;
        if rows.len() < MAX_LISTED {
            rows.push(p);
        }
    };
    for record in reader.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                push(&mut rows, RowProblem { line, field: "-".into(), message: format!("unreadable row: {e}") });
                continue;
            }
        };
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        if record.iter().all(str::is_empty) {
            continue;
        }
        if record.len() > header.len() {
            push(
                &mut rows,
                RowProblem {
                    line,
                    field: "-".into(),
                    message: format!("{} fields, the header has {}", record.len(), header.len()),
                },
            );
            continue;
        }
        let get = |name: &str| -> Option<String> {
            col.get(name).and_then(|i| record.get(*i)).filter(|s| !s.is_empty()).map(str::to_owned)
        };
        let id = get("id").unwrap_or_default();
        let kind_text = get("kind").unwrap_or_default();
        let protocol_text = get("protocol").unwrap_or_default();
        let mut bad = false;
        let kind = DeviceKind::parse(&kind_text);
        if kind.is_none() {
            bad = true;
            push(
                &mut rows,
                RowProblem {
                    line,
                    field: "kind".into(),
                    message: format!("{kind_text:?} is not one of {}", DeviceKind::names()),
                },
            );
        }
        let protocol = Protocol::parse(&protocol_text);
        if protocol.is_none() {
            bad = true;
            push(
                &mut rows,
                RowProblem {
                    line,
                    field: "protocol".into(),
                    message: format!("{protocol_text:?} is not one of {}", Protocol::names()),
                },
            );
        }
        if let Some(first) = seen.get(&id) {
            bad = true;
            push(
                &mut rows,
                RowProblem { line, field: "id".into(), message: format!("{id:?} appears already on line {first}") },
            );
        } else if !id.is_empty() {
            seen.insert(id.clone(), line);
        }
        let (Some(kind), Some(protocol)) = (kind, protocol) else { continue };
        let candidate = NewDevice {
            id,
            name: get("name").unwrap_or_default(),
            kind,
            protocol,
            org_id: get("org_id"),
            profile: get("profile"),
            rtsp_url: get("rtsp_url"),
            password: None,
            admission: Admission::Approved,
            attrs: Default::default(),
        };
        match registry.prepare_device(candidate) {
            Ok(d) if !bad => out.push(d),
            Ok(_) => {}
            Err(e) => push(
                &mut rows,
                RowProblem { line, field: e.field().unwrap_or("-").to_owned(), message: problem_text(&e) },
            ),
        }
    }
    if total_problems > 0 {
        let message = if total_problems > rows.len() {
            format!("{total_problems} problems in the CSV (the first {} listed); nothing was imported", rows.len())
        } else {
            format!("{total_problems} problem(s) in the CSV; nothing was imported")
        };
        return Err(ImportError { message, rows });
    }
    Ok(out)
}

fn problem_text(e: &super::Error) -> String {
    match e {
        super::Error::Invalid { message, .. } => message.clone(),
        other => other.to_string(),
    }
}
