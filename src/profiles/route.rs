//! Route patterns: an MQTT topic or HTTP push path with named captures, one per level:
//! `device/{sn}/message/up/ivs_result`, `hik/{site}/{sn}/event`, `/VIID/Faces`. A level is
//! a literal, `{name}` (captured), `+` (any, not captured) or a final `#` (the rest). The
//! MQTT subscription filter is the pattern with captures as `+`.

#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Literal(String),
    Capture(String),
    Any,
    Rest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    levels: Vec<Level>,
}

impl Pattern {
    pub fn parse(text: &str) -> Result<Pattern, String> {
        if text.is_empty() {
            return Err("empty route".into());
        }
        let parts: Vec<&str> = text.split('/').collect();
        let mut levels = Vec::with_capacity(parts.len());
        for (i, p) in parts.iter().enumerate() {
            let l = match *p {
                "+" => Level::Any,
                "#" if i + 1 == parts.len() => Level::Rest,
                "#" => return Err(format!("`#` must be the last level of `{text}`")),
                p if p.starts_with('{') && p.ends_with('}') && p.len() > 2 => {
                    let name = &p[1..p.len() - 1];
                    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                        return Err(format!("bad capture name `{name}` in `{text}`"));
                    }
                    if levels.iter().any(|l| matches!(l, Level::Capture(n) if n == name)) {
                        return Err(format!("capture `{name}` twice in `{text}`"));
                    }
                    Level::Capture(name.to_owned())
                }
                p if p.contains(['{', '}', '+', '#']) => {
                    return Err(format!("level `{p}` of `{text}`: a capture or wildcard must be a whole level"))
                }
                p => Level::Literal(p.to_owned()),
            };
            levels.push(l);
        }
        Ok(Pattern { text: text.to_owned(), levels })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// The capture names, in order.
    pub fn captures(&self) -> impl Iterator<Item = &str> {
        self.levels.iter().filter_map(|l| match l {
            Level::Capture(n) => Some(n.as_str()),
            _ => None,
        })
    }

    /// Literal levels: more is more specific (tried first).
    pub fn specificity(&self) -> usize {
        self.levels.iter().filter(|l| matches!(l, Level::Literal(_))).count()
    }

    /// The MQTT subscription filter.
    pub fn filter(&self) -> String {
        self.levels
            .iter()
            .map(|l| match l {
                Level::Literal(s) => s.as_str(),
                Level::Capture(_) | Level::Any => "+",
                Level::Rest => "#",
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// The pattern as an MQTT filter with one capture replaced by `value` (the other
    /// captures as `+`): a Mosquitto ACL `pattern` line takes `%u` here.
    pub fn filter_with(&self, capture: &str, value: &str) -> String {
        self.levels
            .iter()
            .map(|l| match l {
                Level::Literal(s) => s.as_str(),
                Level::Capture(n) if n == capture => value,
                Level::Capture(_) | Level::Any => "+",
                Level::Rest => "#",
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// Matches `topic`, returning the captures; `None` when it does not match. Captured
    /// values are never empty.
    pub fn matches(&self, topic: &str) -> Option<Vec<(String, String)>> {
        let mut caps = Vec::new();
        let mut parts = topic.split('/');
        for l in &self.levels {
            match l {
                Level::Rest => return Some(caps),
                _ => {
                    let p = parts.next()?;
                    match l {
                        Level::Literal(s) if s != p => return None,
                        Level::Capture(n) => {
                            if p.is_empty() {
                                return None;
                            }
                            caps.push((n.clone(), p.to_owned()));
                        }
                        _ => {}
                    }
                }
            }
        }
        if parts.next().is_some() {
            return None;
        }
        Some(caps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_wildcards_and_filters() {
        let p = Pattern::parse("hik/{site}/{sn}/event").expect("parse");
        assert_eq!(p.filter(), "hik/+/+/event");
        assert_eq!(
            p.matches("hik/XQ001/FX1234567/event"),
            Some(vec![("site".into(), "XQ001".into()), ("sn".into(), "FX1234567".into())])
        );
        assert_eq!(p.matches("hik/XQ001/FX1234567/status"), None);
        assert_eq!(p.matches("hik/XQ001/FX1234567/event/x"), None);
        assert_eq!(p.matches("hik//FX1/event"), None, "empty capture");
        let rest = Pattern::parse("t/{sn}/#").expect("parse");
        assert_eq!(rest.filter(), "t/+/#");
        assert!(rest.matches("t/a/b/c").is_some());
        assert_eq!(Pattern::parse("/VIID/Faces").expect("parse").matches("/VIID/Faces"), Some(vec![]));
        for bad in ["a/#/b", "a/x{sn}", "a/{s n}", "a/{x}/{x}", ""] {
            assert!(Pattern::parse(bad).is_err(), "{bad}");
        }
    }
}
