//! MQTT-style patterns over a device's `external_id` (`+` one level, `#` the rest), as
//! classification rules and the device list's `pattern` filter use them. The one definition:
//! validation, matching in Rust, and the translation to a PostgreSQL regular expression (every
//! metacharacter of the literal levels escaped) all live here, so that what the API accepts,
//! what it tests and what PostgreSQL matches cannot drift apart.

use std::fmt;

use super::fields::{FieldError, MAX_EXTERNAL_ID_CHARS, text};

/// A validated pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPattern {
    text: String,
    levels: Vec<Level>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    /// Matches exactly this text (which may be empty: `a//b` has an empty level).
    Literal(String),
    /// `+`: any one level.
    One,
    /// `#`, last only: any number of further levels, none included (`a/#` matches `a`).
    Rest,
}

impl TopicPattern {
    /// Checks `pattern` as field `field`: the text rules of an external id (1 to 1024 characters,
    /// no control characters, no whitespace at either end), `+` and `#` only as whole levels, `#`
    /// only as the last one.
    pub fn parse(field: &str, pattern: &str) -> Result<TopicPattern, FieldError> {
        let text = text(field, pattern, MAX_EXTERNAL_ID_CHARS)?;
        let parts: Vec<&str> = text.split('/').collect();
        let last = parts.len() - 1;
        let mut levels = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            levels.push(match *part {
                "+" => Level::One,
                "#" if i == last => Level::Rest,
                "#" => {
                    return Err(FieldError::new(field, "may use # only as its last level"));
                }
                p if p.contains(['+', '#']) => {
                    return Err(FieldError::new(
                        field,
                        "may use + and # only as whole levels (a/+/b, a/#), not inside one",
                    ));
                }
                p => Level::Literal(p.to_owned()),
            });
        }
        Ok(TopicPattern { text, levels })
    }

    /// As `parse`, for a pattern from a URL's query string, where an unescaped `+` arrives as a
    /// space (form encoding): a level that is exactly one space is read as `+`, so that
    /// `?pattern=SDE11/+/UTILITIES/#` works as typed (`%2B` works too).
    pub fn parse_query(field: &str, pattern: &str) -> Result<TopicPattern, FieldError> {
        let restored: Vec<&str> = pattern
            .split('/')
            .map(|level| if level == " " { "+" } else { level })
            .collect();
        TopicPattern::parse(field, &restored.join("/"))
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `topic` (an external id) matches.
    pub fn matches(&self, topic: &str) -> bool {
        let mut parts = topic.split('/');
        for level in &self.levels {
            match level {
                Level::Rest => return true,
                Level::One => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Level::Literal(l) => {
                    if parts.next() != Some(l.as_str()) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }

    /// The same pattern as a PostgreSQL (ARE) regular expression, anchored at both ends, for
    /// `external_id ~ $regex`. Literal levels have every metacharacter escaped; `+` becomes
    /// `[^/]*` and a final `#` `(/.*)?` (after the previous level's `/`, which it swallows, so
    /// that `a/#` matches `a` as MQTT says). The expression has no nested repetition: matching
    /// is linear in the length of the external id.
    pub fn to_regex(&self) -> String {
        let mut regex = String::with_capacity(self.text.len() * 2 + 8);
        regex.push('^');
        for (i, level) in self.levels.iter().enumerate() {
            match level {
                Level::Rest => {
                    if i == 0 {
                        regex.push_str(".*");
                    } else {
                        // Undo the separator pushed after the previous level.
                        regex.pop();
                        regex.pop();
                        regex.push_str("(/.*)?");
                    }
                    regex.push('$');
                    return regex;
                }
                Level::One => regex.push_str("[^/]*"),
                Level::Literal(l) => escape_into(&mut regex, l),
            }
            if i + 1 < self.levels.len() {
                regex.push_str("\\/");
            }
        }
        regex.push('$');
        regex
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Characters with a meaning in a PostgreSQL ARE outside brackets (plus `/`, escaped for
/// symmetry). PostgreSQL reads `\` followed by one of these as the character itself.
const METACHARACTERS: &[char] = &[
    '\\', '^', '$', '.', '|', '?', '*', '+', '(', ')', '[', ']', '{', '}', '/',
];

fn escape_into(regex: &mut String, literal: &str) {
    for c in literal.chars() {
        if METACHARACTERS.contains(&c) {
            regex.push('\\');
        }
        regex.push(c);
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn p(s: &str) -> TopicPattern {
        TopicPattern::parse("pattern", s).expect("valid pattern")
    }

    #[test]
    fn plus_is_one_level_and_hash_is_the_rest_including_none() {
        let pattern = p("SDE11/+/UTILITIES/BOILER/+");
        assert!(pattern.matches("SDE11/B3/UTILITIES/BOILER/T1"));
        assert!(pattern.matches("SDE11//UTILITIES/BOILER/"));
        assert!(!pattern.matches("SDE11/B3/UTILITIES/BOILER"));
        assert!(!pattern.matches("SDE11/B3/UTILITIES/BOILER/T1/x"));
        assert!(!pattern.matches("SDE11/B3/UTILITIES/CHILLER/T1"));
        let rest = p("SDE11/#");
        assert!(rest.matches("SDE11"));
        assert!(rest.matches("SDE11/a/b/c"));
        assert!(!rest.matches("SDE12/a"));
        assert!(!rest.matches("SDE110"));
        assert!(p("#").matches("anything/at/all"));
    }

    #[test]
    fn misplaced_wildcards_and_bad_text_are_refused() {
        for bad in [
            "a/#/b", "#/a", "a/+x", "a/x#", "a+", "", " a", "a\u{0}b", "a\nb",
        ] {
            assert!(
                TopicPattern::parse("pattern", bad).is_err(),
                "{bad:?} accepted"
            );
        }
        let long = "a/".repeat(MAX_EXTERNAL_ID_CHARS);
        assert!(TopicPattern::parse("pattern", &long).is_err());
    }

    #[test]
    fn a_plus_that_a_query_string_turned_into_a_space_is_a_plus_again() {
        let pattern = TopicPattern::parse_query("pattern", "SDE11/ /UTILITIES/ ").expect("valid");
        assert_eq!(pattern.as_str(), "SDE11/+/UTILITIES/+");
        assert!(TopicPattern::parse_query("pattern", "a/ b").is_ok_and(|p| p.as_str() == "a/ b"));
        assert!(TopicPattern::parse_query("pattern", "a/b ").is_err());
    }

    #[test]
    fn regex_escapes_every_metacharacter_and_anchors_both_ends() {
        assert_eq!(p("a.b/+/c").to_regex(), r"^a\.b\/[^/]*\/c$");
        assert_eq!(p("x/#").to_regex(), r"^x(/.*)?$");
        assert_eq!(p("#").to_regex(), r"^.*$");
        assert_eq!(p(r"%_\(^$|?*[{").to_regex(), r"^%_\\\(\^\$\|\?\*\[\{$");
        assert_eq!(p("a//b").to_regex(), r"^a\/\/b$");
    }

    fn level() -> impl Strategy<Value = String> {
        // Every character a hostile publisher might use, metacharacters included.
        proptest::string::string_regex(r"[a-zA-Z0-9 ._%\\^$|?*()\[\]{}\-é]{0,6}").expect("strategy")
    }

    proptest! {
        /// A pattern made from a topic by replacing some levels with `+` (and maybe its tail with
        /// `#`) matches that topic; the topic itself as a pattern matches only itself.
        #[test]
        fn patterns_made_from_a_topic_match_it(
            levels in proptest::collection::vec(level(), 1..8),
            wild in proptest::collection::vec(any::<bool>(), 8),
            cut in 0usize..9,
            other in proptest::collection::vec(level(), 1..8),
        ) {
            let topic = levels.join("/");
            prop_assume!(TopicPattern::parse("p", &topic).is_ok());
            let literal = p(&topic);
            prop_assert!(literal.matches(&topic));
            let other = other.join("/");
            prop_assert_eq!(literal.matches(&other), other == topic);
            let mut parts: Vec<String> = levels
                .iter()
                .zip(&wild)
                .map(|(l, w)| if *w { "+".to_owned() } else { l.clone() })
                .collect();
            if cut < parts.len() {
                parts.truncate(cut);
                parts.push("#".to_owned());
            }
            let pattern = parts.join("/");
            if let Ok(pattern) = TopicPattern::parse("p", &pattern) {
                prop_assert!(pattern.matches(&topic), "{} vs {}", pattern, topic);
            }
        }

        /// Whatever the text, parsing never panics and an accepted pattern's regex starts and
        /// ends anchored with nothing unescaped from the text in between.
        #[test]
        fn any_text_parses_or_is_refused_and_regexes_stay_anchored(text in ".{0,64}") {
            if let Ok(pattern) = TopicPattern::parse("p", &text) {
                let regex = pattern.to_regex();
                prop_assert!(regex.starts_with('^') && regex.ends_with('$'));
                prop_assert!(pattern.matches(&text) || text.split('/').any(|l| l == "+" || l == "#"));
            }
        }
    }
}
