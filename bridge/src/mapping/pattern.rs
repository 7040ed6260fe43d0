//! The little languages of a mapping rule: patterns over topic levels (`{name}` one level,
//! `{name*}`/`{name+}` the rest), MQTT topic filters (`+`, `#`), and templates that assemble
//! a device path or name from the captured levels (`{site}/{device}`).

use std::collections::BTreeMap;

#[derive(Debug, PartialEq)]
pub(super) enum Segment {
    Literal(String),
    Var(String),
    /// `{name*}` (zero or more levels) or `{name+}` (one or more), only last.
    Tail {
        name: String,
        at_least_one: bool,
    },
}

#[derive(Debug)]
pub(super) struct Template(Vec<Piece>);

#[derive(Debug)]
pub(super) enum Piece {
    Text(String),
    Var(String),
}

pub(super) fn parse_pattern(pattern: &str) -> Result<Vec<Segment>, String> {
    let raw: Vec<&str> = pattern.split('/').collect();
    let mut segments = Vec::with_capacity(raw.len());
    let mut seen = Vec::new();
    for (i, level) in raw.iter().enumerate() {
        let segment = match level.strip_prefix('{').and_then(|l| l.strip_suffix('}')) {
            Some(inner) => {
                let (name, tail) = match inner.strip_suffix('*').or_else(|| inner.strip_suffix('+'))
                {
                    Some(name) => (name, Some(inner.ends_with('+'))),
                    None => (inner, None),
                };
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(format!("bad segment name {level:?}"));
                }
                if seen.contains(&name) {
                    return Err(format!("segment {{{name}}} appears twice"));
                }
                seen.push(name);
                match tail {
                    Some(_) if i + 1 != raw.len() => {
                        return Err(format!("{level} may only be the last segment"));
                    }
                    Some(at_least_one) => Segment::Tail {
                        name: name.to_owned(),
                        at_least_one,
                    },
                    None => Segment::Var(name.to_owned()),
                }
            }
            None if level.is_empty() || level.contains(['{', '}', '+', '#']) => {
                return Err(format!("bad literal segment {level:?}"));
            }
            None => Segment::Literal((*level).to_owned()),
        };
        segments.push(segment);
    }
    Ok(segments)
}

pub(super) fn match_pattern<'p>(
    pattern: &'p [Segment],
    levels: &[&str],
) -> Option<BTreeMap<&'p str, String>> {
    let mut values = BTreeMap::new();
    for (i, segment) in pattern.iter().enumerate() {
        match segment {
            Segment::Literal(text) => (levels.get(i)? == text).then_some(())?,
            Segment::Var(name) => {
                values.insert(name.as_str(), (*levels.get(i)?).to_owned());
            }
            Segment::Tail { name, at_least_one } => {
                let rest = levels.get(i..).unwrap_or_default();
                if *at_least_one && rest.is_empty() {
                    return None;
                }
                values.insert(name.as_str(), rest.join("/"));
                return Some(values);
            }
        }
    }
    (pattern.len() == levels.len()).then_some(values)
}

/// MQTT filter semantics: `+` is one level, a final `#` any number (including none).
pub(super) fn filter_matches(filter: &[String], levels: &[&str]) -> bool {
    for (i, f) in filter.iter().enumerate() {
        match f.as_str() {
            "#" => return true,
            "+" if i < levels.len() => {}
            literal if levels.get(i) == Some(&literal) => {}
            _ => return false,
        }
    }
    filter.len() == levels.len()
}

impl Template {
    pub(super) fn parse(text: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("unclosed {{ in {text:?}"))?;
            pieces.push(Piece::Var(rest[open + 1..open + close].to_owned()));
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("unopened }} in {text:?}"));
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        Ok(Template(pieces))
    }

    pub(super) fn vars(&self) -> impl Iterator<Item = &str> {
        self.0.iter().filter_map(|p| match p {
            Piece::Var(v) => Some(v.as_str()),
            Piece::Text(_) => None,
        })
    }

    pub(super) fn render(&self, values: &BTreeMap<&str, String>) -> String {
        self.0
            .iter()
            .map(|p| match p {
                Piece::Text(t) => t.as_str(),
                Piece::Var(v) => values.get(v.as_str()).map_or("", String::as_str),
            })
            .collect()
    }
}
