//! Which device a topic belongs to. By default the device is the topic without its last level and
//! the metric is the last level; a mapping file declares rules with named segments instead, e.g.
//! `pattern = "{site}/{plant}/{area}/{system}/{device}/{metric}"`.

use std::fmt;
use std::path::Path;

use serde::Deserialize;

use self::pattern::{Segment, Template, filter_matches, match_pattern, parse_pattern};

mod pattern;

// Device names longer than the API's limit are cut; the external id keeps the full path, and a
// longer one than the API takes is refused as a broken topic.
use gito_wire::limits::{MAX_EXTERNAL_ID_CHARS, truncate_name};

/// What a topic maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapped {
    /// The device path: the device's `external_id` in the API.
    pub external_id: String,
    pub name: String,
    pub device_type: Option<String>,
    /// The metric a bare value on this topic is recorded as.
    pub metric: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MappingError {
    #[error("mapping file {file}: {message}")]
    File { file: String, message: String },
    #[error("mapping rule {rule}: {message}")]
    Rule { rule: usize, message: String },
}

/// Why a topic cannot be mapped (the message is skipped and counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmapped {
    /// No rule of the mapping file matches the topic.
    NoRule,
    /// An empty level (`a//b`, `a/`) or a device path over the API's limit.
    InvalidTopic,
}

#[derive(Debug, Default)]
pub struct Mapping {
    /// Empty: the default mapping.
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingFile {
    #[serde(default, rename = "rule")]
    rules: Vec<RuleSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    /// MQTT topic filter (`+`, `#`) the rule applies to; every topic when absent.
    filter: Option<String>,
    pattern: String,
    device: String,
    device_type: Option<String>,
    name: Option<String>,
    metric: Option<String>,
}

#[derive(Debug)]
pub struct Rule {
    number: usize,
    filter: Option<Vec<String>>,
    pattern: Vec<Segment>,
    device: Template,
    device_type: Option<Template>,
    name: Option<Template>,
    metric: Template,
    text: String,
}

impl Mapping {
    pub fn load(path: &Path) -> Result<Mapping, MappingError> {
        let file_error = |message: String| MappingError::File {
            file: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
        let file: MappingFile = toml::from_str(&text).map_err(|e| file_error(e.to_string()))?;
        if file.rules.is_empty() {
            return Err(file_error("no [[rule]] entries".to_owned()));
        }
        let rules = file
            .rules
            .into_iter()
            .enumerate()
            .map(|(i, spec)| Rule::parse(i + 1, spec))
            .collect::<Result<_, _>>()?;
        Ok(Mapping { rules })
    }

    pub fn map(&self, topic: &str) -> Result<(Mapped, MatchedBy<'_>), Unmapped> {
        let levels: Vec<&str> = topic.split('/').collect();
        if levels.iter().any(|l| l.is_empty()) {
            return Err(Unmapped::InvalidTopic);
        }
        let (mapped, by) = if self.rules.is_empty() {
            (default_mapping(&levels), MatchedBy::Default)
        } else {
            self.rules
                .iter()
                .find_map(|rule| rule.apply(&levels).map(|m| (m, MatchedBy::Rule(rule))))
                .ok_or(Unmapped::NoRule)?
        };
        if mapped.external_id.is_empty()
            || mapped.external_id.chars().count() > MAX_EXTERNAL_ID_CHARS
        {
            return Err(Unmapped::InvalidTopic);
        }
        Ok((mapped, by))
    }
}

/// Which rule mapped a topic (for `check-mapping`).
pub enum MatchedBy<'a> {
    Default,
    Rule(&'a Rule),
}

impl fmt::Display for MatchedBy<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MatchedBy::Default => f.write_str("default (device = topic without its last level)"),
            MatchedBy::Rule(rule) => write!(f, "#{} ({})", rule.number, rule.text),
        }
    }
}

fn default_mapping(levels: &[&str]) -> Mapped {
    let (device, metric) = match levels {
        [only] => ((*only).to_owned(), "value".to_owned()),
        [init @ .., last] => (init.join("/"), (*last).to_owned()),
        [] => unreachable!("split yields at least one level"),
    };
    Mapped {
        name: truncate_name(&device),
        device_type: Some(levels[0].to_owned()),
        external_id: device,
        metric,
    }
}

impl Rule {
    fn parse(number: usize, spec: RuleSpec) -> Result<Rule, MappingError> {
        let error = |message: String| MappingError::Rule {
            rule: number,
            message,
        };
        let pattern = parse_pattern(&spec.pattern).map_err(error)?;
        let vars: Vec<&str> = pattern
            .iter()
            .filter_map(|s| match s {
                Segment::Var(n) | Segment::Tail { name: n, .. } => Some(n.as_str()),
                Segment::Literal(_) => None,
            })
            .collect();
        let template = |field: &str, text: &str| -> Result<Template, MappingError> {
            let t = Template::parse(text).map_err(|m| error(format!("{field}: {m}")))?;
            if let Some(unknown) = t.vars().find(|v| !vars.contains(v)) {
                return Err(error(format!(
                    "{field}: {{{unknown}}} is not a segment of the pattern"
                )));
            }
            Ok(t)
        };
        let default_metric = if vars.contains(&"metric") {
            "{metric}"
        } else {
            "value"
        };
        let filter = spec
            .filter
            .as_deref()
            .map(|f| f.split('/').map(str::to_owned).collect());
        Ok(Rule {
            number,
            text: match &spec.filter {
                Some(f) => format!("filter {f}, pattern {}", spec.pattern),
                None => format!("pattern {}", spec.pattern),
            },
            filter,
            device: template("device", &spec.device)?,
            device_type: spec
                .device_type
                .as_deref()
                .map(|t| template("device_type", t))
                .transpose()?,
            name: spec
                .name
                .as_deref()
                .map(|t| template("name", t))
                .transpose()?,
            metric: template("metric", spec.metric.as_deref().unwrap_or(default_metric))?,
            pattern,
        })
    }

    fn apply(&self, levels: &[&str]) -> Option<Mapped> {
        if let Some(filter) = &self.filter
            && !filter_matches(filter, levels)
        {
            return None;
        }
        let values = match_pattern(&self.pattern, levels)?;
        let device = self.device.render(&values);
        Some(Mapped {
            name: truncate_name(
                &self
                    .name
                    .as_ref()
                    .map_or_else(|| device.clone(), |t| t.render(&values)),
            ),
            device_type: self
                .device_type
                .as_ref()
                .map(|t| t.render(&values))
                .filter(|t| !t.is_empty()),
            metric: self.metric.render(&values),
            external_id: device,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOPIC: &str = "SDE11/JAX/UTILITIES/BOILER/OPT_G/CHIMNEY_TEMP";

    fn rules(toml: &str) -> Result<Mapping, MappingError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mapping.toml");
        std::fs::write(&path, toml).expect("write");
        Mapping::load(&path)
    }

    #[test]
    fn default_mapping_splits_device_path_metric_and_type_prefix() {
        let (m, _) = Mapping::default().map(TOPIC).expect("maps");
        assert_eq!(m.external_id, "SDE11/JAX/UTILITIES/BOILER/OPT_G");
        assert_eq!(m.name, m.external_id);
        assert_eq!(m.device_type.as_deref(), Some("SDE11"));
        assert_eq!(m.metric, "CHIMNEY_TEMP");
    }

    #[test]
    fn a_one_level_topic_is_its_own_device_with_metric_value() {
        let (m, _) = Mapping::default().map("thermostat").expect("maps");
        assert_eq!(
            (m.external_id.as_str(), m.metric.as_str()),
            ("thermostat", "value")
        );
    }

    #[test]
    fn broken_topics_are_refused() {
        for topic in ["a//b", "a/", "/a", "", &format!("{}/m", "x".repeat(1025))] {
            assert_eq!(
                Mapping::default().map(topic).err(),
                Some(Unmapped::InvalidTopic),
                "{topic:?}"
            );
        }
    }

    #[test]
    fn long_device_paths_keep_their_id_and_get_a_cut_name() {
        let path = "d".repeat(300);
        let (m, _) = Mapping::default().map(&format!("{path}/m")).expect("maps");
        assert_eq!(m.external_id, path);
        assert_eq!(m.name.chars().count(), gito_wire::limits::MAX_NAME_CHARS);
    }

    #[test]
    fn named_segments_build_device_type_and_metric() {
        let mapping = rules(
            r#"
            [[rule]]
            filter = "SDE11/#"
            pattern = "{site}/{plant}/{area}/{system}/{device}/{metric}"
            device = "{site}/{plant}/{area}/{system}/{device}"
            device_type = "{system}"
            name = "{plant} {device}"
            "#,
        )
        .expect("valid");
        let (m, by) = mapping.map(TOPIC).expect("maps");
        assert_eq!(m.external_id, "SDE11/JAX/UTILITIES/BOILER/OPT_G");
        assert_eq!(m.device_type.as_deref(), Some("BOILER"));
        assert_eq!(m.name, "JAX OPT_G");
        assert_eq!(m.metric, "CHIMNEY_TEMP");
        assert!(by.to_string().starts_with("#1 (filter SDE11/#"));
        assert_eq!(
            mapping.map("OTHER/JAX/UTILITIES/BOILER/OPT_G/T").err(),
            Some(Unmapped::NoRule)
        );
        assert_eq!(mapping.map("SDE11/too/short").err(), Some(Unmapped::NoRule));
    }

    #[test]
    fn tails_take_the_remaining_levels_and_rules_apply_in_order() {
        let mapping = rules(
            r#"
            [[rule]]
            pattern = "plant/{device}/status"
            device = "plant/{device}"
            metric = "status"

            [[rule]]
            pattern = "plant/{device}/{rest+}"
            device = "plant/{device}"
            metric = "{rest}"

            [[rule]]
            pattern = "{device}/{rest*}"
            device = "{device}"
            "#,
        )
        .expect("valid");
        assert_eq!(
            mapping.map("plant/p1/status").expect("maps").0.metric,
            "status"
        );
        let (m, by) = mapping.map("plant/p1/a/b/c").expect("maps");
        assert_eq!(
            (m.external_id.as_str(), m.metric.as_str()),
            ("plant/p1", "a/b/c")
        );
        assert!(by.to_string().starts_with("#2"));
        let (m, _) = mapping.map("solo").expect("zero-level tail");
        assert_eq!(
            (m.external_id.as_str(), m.metric.as_str(), m.device_type),
            ("solo", "value", None)
        );
    }

    #[test]
    fn invalid_rules_are_refused_with_their_number() {
        for (toml, message) in [
            (
                "[[rule]]\npattern = \"{a}/{b*}/{c}\"\ndevice = \"{a}\"",
                "may only be the last",
            ),
            (
                "[[rule]]\npattern = \"{a}\"\ndevice = \"{nope}\"",
                "not a segment",
            ),
            ("[[rule]]\npattern = \"{a}/{a}\"\ndevice = \"{a}\"", "twice"),
            (
                "[[rule]]\npattern = \"a/+/b\"\ndevice = \"x\"",
                "bad literal",
            ),
        ] {
            let error = rules(toml).expect_err(toml).to_string();
            assert!(
                error.starts_with("mapping rule 1: ") && error.contains(message),
                "{error}"
            );
        }
        assert!(
            rules("")
                .expect_err("empty")
                .to_string()
                .contains("no [[rule]]")
        );
        assert!(rules("[[rule]]\npattern = \"x\"\ndevice = \"x\"\nbogus = 1").is_err());
    }
}
