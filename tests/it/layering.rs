//! The layering rules of docs/architecture.md, enforced: every `crate::` path in `src/` is
//! checked against the table there (the single source of truth), and the module graph must
//! have no circles. The checker is tested on forbidden imports of its own making, so a rule
//! that stops being checked fails here too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The table: group name → (members, may import).
struct Table {
    groups: BTreeMap<String, (Vec<String>, Vec<String>)>,
}

impl Table {
    /// Reads the rows after the `layering table` marker: `| @group | members | may import |`.
    fn parse(doc: &str) -> Table {
        let start = doc.find("<!-- layering table").expect("docs/architecture.md has the layering table marker");
        let mut groups = BTreeMap::new();
        for line in doc[start..].lines().skip(1) {
            let line = line.trim();
            if line.is_empty() && !groups.is_empty() {
                break;
            }
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            if cells.len() != 3 || !cells[0].starts_with('@') {
                continue;
            }
            let list = |s: &str| s.split(',').map(|x| x.trim().to_owned()).filter(|x| !x.is_empty()).collect();
            groups.insert(cells[0].to_owned(), (list(cells[1]), list(cells[2])));
        }
        assert!(groups.len() >= 8, "the layering table has only {} rows", groups.len());
        Table { groups }
    }

    /// The group a module belongs to: an exact member first, then a `dir/*` pattern.
    fn group_of(&self, module: &str) -> Option<&str> {
        let exact = self.groups.iter().find(|(_, (m, _))| m.iter().any(|x| x == module));
        let wild = || {
            self.groups.iter().find(|(_, (m, _))| {
                m.iter().any(|x| x.strip_suffix("/*").is_some_and(|dir| module.starts_with(&format!("{dir}/"))))
            })
        };
        exact.or_else(wild).map(|(g, _)| g.as_str())
    }

    fn allows(&self, from: &str, to: &str) -> Result<(), String> {
        let Some(g) = self.group_of(from) else { return Err(format!("{from} is in no group of the table")) };
        let Some(tg) = self.group_of(to) else { return Err(format!("{to} is in no group of the table")) };
        if to == "app" {
            return Err("nothing may import app".into());
        }
        let allowed = &self.groups[g].1;
        if allowed.iter().any(|a| a == "*" || a == tg) {
            Ok(())
        } else {
            Err(format!("{g} may import {} only", allowed.join(", ")))
        }
    }
}

/// The module a file of `src/` belongs to.
fn module_of(rel: &str) -> String {
    let parts: Vec<&str> = rel.trim_end_matches(".rs").split('/').collect();
    match parts.as_slice() {
        [one] => (*one).to_owned(),
        [dir @ ("sources" | "sinks" | "protocol"), "mod"] => (*dir).to_owned(),
        [dir @ ("sources" | "sinks" | "protocol"), entry, ..] => format!("{dir}/{entry}"),
        [top, ..] => (*top).to_owned(),
        [] => String::new(),
    }
}

/// The modules a file's text names through `crate::` paths (comments left out).
fn imports_of(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let ident = |s: &str| -> String {
                s.chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect()
            };
            let first = ident(rest);
            if first.is_empty() {
                if rest.starts_with('{') {
                    // In no group, so reported: one path per `use` keeps imports readable here.
                    out.insert("crate::{..} (write one path per use)".to_owned());
                }
                continue;
            }
            let mut module = first.clone();
            if matches!(first.as_str(), "sources" | "sinks" | "protocol") {
                let after = &rest[first.len()..];
                if let Some(next) = after.strip_prefix("::") {
                    let second = ident(next);
                    if (!second.is_empty() && next[second.len()..].starts_with("::")) || is_module(&first, &second) {
                        module = format!("{first}/{second}");
                    }
                }
            }
            out.insert(module);
        }
    }
    out
}

/// Whether `crate::dir::name` names a module (a file or directory under `src/dir/`) rather
/// than an item of `dir/mod.rs`.
fn is_module(dir: &str, name: &str) -> bool {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(dir);
    !name.is_empty() && (src.join(format!("{name}.rs")).is_file() || src.join(name).is_dir())
}

/// Every forbidden import and every circle, as lines a developer can act on.
fn violations(table: &Table, files: &[(String, String)]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (rel, text) in files {
        let from = module_of(rel);
        for to in imports_of(text) {
            if to == from {
                continue;
            }
            if let Err(why) = table.allows(&from, &to) {
                problems.push(format!("src/{rel}: {from} imports {to}: {why}"));
            }
            graph.entry(from.clone()).or_default().insert(to);
        }
    }
    for (a, targets) in &graph {
        for b in targets {
            if reaches(&graph, b, a) {
                problems.push(format!("circle: {a} imports {b}, and {b} leads back to {a}"));
            }
        }
    }
    problems
}

fn reaches(graph: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut stack = vec![from.to_owned()];
    while let Some(m) = stack.pop() {
        if m == to {
            return true;
        }
        if seen.insert(m.clone()) {
            stack.extend(graph.get(&m).into_iter().flatten().cloned());
        }
    }
    false
}

fn table() -> Table {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/architecture.md"))
        .expect("docs/architecture.md");
    Table::parse(&doc)
}

fn source_files(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).expect("readable src dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            source_files(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(root).expect("under src").to_string_lossy().replace('\\', "/");
            out.push((rel, std::fs::read_to_string(&path).expect("readable source")));
        }
    }
}

#[test]
fn every_import_in_src_keeps_to_the_table_and_no_modules_form_a_circle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    source_files(&root, &root, &mut files);
    assert!(files.len() > 100, "only {} source files found", files.len());
    let problems = violations(&table(), &files);
    assert!(problems.is_empty(), "layering broken (docs/architecture.md):\n{}", problems.join("\n"));
}

#[test]
fn the_checker_catches_each_kind_of_forbidden_import_and_a_circle() {
    let t = table();
    let file = |rel: &str, text: &str| vec![(rel.to_owned(), text.to_owned())];
    for (rel, text, what) in [
        ("sinks/gat1400/mod.rs", "use crate::sources::gb28181::Error;", "a sink importing a source"),
        ("sources/mqtt/gate.rs", "let x = crate::sources::rtsp::pull::POLL;", "a source importing another source"),
        ("sources/rtsp/pull.rs", "use crate::sinks::gat1400::KINDS;", "a source importing a sink"),
        ("api/devices.rs", "use crate::sources::rtsp::Camera;", "the API importing a source"),
        ("api/mod.rs", "use crate::link::hub::Hub;", "the API importing the link"),
        ("clock.rs", "use crate::registry::DeviceKey;", "the bottom floor importing the core"),
        ("ids.rs", "use crate::config::Config;", "the bottom floor importing the config"),
        ("protocol/sip/message.rs", "use crate::registry::Registry;", "protocol importing the core"),
        ("protocol/manscdp.rs", "use crate::config::Gb28181;", "protocol importing the config"),
        ("registry/mod.rs", "use crate::app::Error;", "anything importing app"),
        ("presence/runner.rs", "use crate::sources::Shared;", "the core importing sources"),
        ("rate/mod.rs", "use crate::{clock::Millis, sources::Shared};", "a grouped import the checker cannot read"),
    ] {
        assert!(!violations(&t, &file(rel, text)).is_empty(), "{what} ({rel}: {text}) was not caught");
    }
    // Comments are not imports; the allowed ones pass.
    assert!(violations(&t, &file("clock.rs", "// see crate::registry for keys")).is_empty());
    assert!(violations(&t, &file("sources/gat1400/server.rs", "use crate::sources::ingest::Ingest;")).is_empty());
    assert!(violations(&t, &file("link/hub.rs", "use crate::sources::Shared;")).is_empty());
    assert!(violations(&t, &file("sinks/gat1400/client.rs", "use crate::protocol::digest::answer;")).is_empty());
    // Two core modules importing each other are a circle, though each import is allowed.
    let circle = vec![
        ("events/mod.rs".to_owned(), "use crate::outbox::Routes;".to_owned()),
        ("outbox/store.rs".to_owned(), "use crate::events::EventLog;".to_owned()),
    ];
    let found = violations(&t, &circle);
    assert!(found.iter().any(|p| p.starts_with("circle:")), "{found:?}");
    assert_eq!(module_of("sources/gb28181/server/mod.rs"), "sources/gb28181");
    assert_eq!(module_of("sources/mod.rs"), "sources");
    assert_eq!(module_of("app/relay.rs"), "app");
}
