//! Sparse parsing: a profile names every path it reads, so a message is parsed into a
//! `serde_json::Value` holding only those subtrees; everything else is skipped by the parser
//! without being built (a vendor's 45-field event becomes a dozen values). The document is
//! still checked to be well-formed JSON in full. `Need` is the tree of needed paths, built
//! once per profile from its expressions and decode steps.

use std::fmt;

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::expr::{Expr, Root, Step};

/// The parts of a document a profile reads.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Need {
    /// The whole subtree is needed.
    pub full: bool,
    /// Few keys per level: a short list beats hashing every key of the message.
    pub keys: Vec<(String, Need)>,
    /// Needed inside every element of an array here.
    pub items: Option<Box<Need>>,
}

impl Need {
    /// Marks `path` (from here) as needed: the subtree at its end in full.
    pub fn add(&mut self, path: &[Step]) {
        if self.full {
            return;
        }
        match path.split_first() {
            None => {
                self.full = true;
                self.keys.clear();
                self.items = None;
            }
            Some((Step::Key(k), rest)) => {
                let i = match self.keys.iter().position(|(name, _)| name == k) {
                    Some(i) => i,
                    None => {
                        self.keys.push((k.clone(), Need::default()));
                        self.keys.len() - 1
                    }
                };
                self.keys[i].1.add(rest);
            }
            Some((Step::Index(_), rest)) => self.items.get_or_insert_with(Box::default).add(rest),
        }
    }

    /// Adds every path `e` reads: record paths under `record`, message paths from the root.
    pub fn add_expr(&mut self, e: &Expr, record: &[Step]) {
        match e {
            Expr::Path(Root::Record, steps) => {
                let full: Vec<Step> = record.iter().chain(steps).cloned().collect();
                self.add(&full);
            }
            Expr::Path(Root::Message, steps) => self.add(steps),
            Expr::Lit(_) | Expr::Capture(_) | Expr::Table(_) => {}
            Expr::Not(a) => self.add_expr(a, record),
            Expr::And(a, b) | Expr::Or(a, b) | Expr::Cmp(_, a, b) => {
                self.add_expr(a, record);
                self.add_expr(b, record);
            }
            Expr::In(x, items) => {
                self.add_expr(x, record);
                items.iter().for_each(|i| self.add_expr(i, record));
            }
            Expr::Cond(c, a, b) => {
                self.add_expr(c, record);
                self.add_expr(a, record);
                self.add_expr(b, record);
            }
            Expr::Call(_, args) => args.iter().for_each(|a| self.add_expr(a, record)),
        }
    }
}

/// Parses `text` keeping only what `need` names.
pub fn parse(text: &str, need: &Need) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(text);
    let v = Seed(need).deserialize(&mut de)?;
    de.end()?;
    Ok(v)
}

struct Seed<'n>(&'n Need);

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        if self.0.full {
            return serde::Deserialize::deserialize(d);
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        match &self.0.items {
            Some(inner) => {
                while let Some(v) = seq.next_element_seed(Seed(inner))? {
                    out.push(v);
                }
            }
            None => {
                // Indexes stay right for nothing reads inside: keep nulls in their places.
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    out.push(Value::Null);
                }
            }
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        // An object where a list was expected (a fan-out over one item) is read as that item.
        let need = match &self.0.items {
            Some(items) if self.0.keys.is_empty() => items,
            _ => self.0,
        };
        if need.full {
            let mut out = Map::new();
            while let Some((k, v)) = map.next_entry::<String, Value>()? {
                out.insert(k, v);
            }
            return Ok(Value::Object(out));
        }
        let mut out = Map::new();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match need.keys.iter().find(|(name, _)| same_key(name, &key)).map(|(_, n)| n) {
                Some(need) => {
                    let v = map.next_value_seed(Seed(need))?;
                    out.insert(key.into_owned(), v);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(out))
    }
}

/// Key equality with the cheap tests first: most keys of a message are not needed, and a
/// length and two bytes tell almost all of them apart without a `memcmp` call.
#[inline]
fn same_key(name: &str, key: &str) -> bool {
    let (a, b) = (name.as_bytes(), key.as_bytes());
    a.len() == b.len() && a.first() == b.first() && a.last() == b.last() && a == b
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_what_is_named_and_still_checks_the_rest() {
        let mut need = Need::default();
        need.add(&[Step::Key("a".into()), Step::Key("b".into())]);
        need.add(&[Step::Key("list".into()), Step::Index(0), Step::Key("x".into())]);
        need.add(&[Step::Key("whole".into())]);
        let text = r#"{"a": {"b": 1, "c": [1,2,{"d": "skip"}]}, "z": "skip", "list": [{"x": 1, "y": 2}, {"x": 3}],
                       "whole": {"k": [1, {"m": null}]}, "esc": "\u00e9\"q"}"#;
        let v = parse(text, &need).expect("parse");
        assert_eq!(v, json!({"a": {"b": 1}, "list": [{"x": 1}, {"x": 3}], "whole": {"k": [1, {"m": null}]}}));
        assert!(parse(r#"{"a": {"b": 1}, "z": [1,}"#, &need).is_err(), "skipped parts are still checked");
        assert!(parse(r#"{"a": 1} trailing"#, &need).is_err());
        let mut all = Need::default();
        all.add(&[]);
        assert_eq!(parse(text, &all).expect("full"), serde_json::from_str::<Value>(text).expect("serde"));
    }
}
