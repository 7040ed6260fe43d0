//! Sizes and text rules both sides enforce: the bridge so that it never asks the API for what it
//! would refuse, the API so that nothing it stores breaks a reader.

/// Names of tenants, hierarchy rows, device types and devices.
pub const MAX_NAME_CHARS: usize = 200;
/// External ids are MQTT device paths; topics can be long but not unbounded.
pub const MAX_EXTERNAL_ID_CHARS: usize = 1024;
pub const MAX_DESCRIPTION_CHARS: usize = 2000;
/// Metric names in an envelope (and so in `telemetry.metric`).
pub const MAX_METRIC_CHARS: usize = 200;

/// Why a text field was refused; the `Display` is the end of a sentence that starts with the
/// field's name ("name must not be empty").
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("must not be empty")]
    Empty,
    #[error("must not begin or end with whitespace")]
    SurroundingWhitespace,
    #[error("must be at most {max} characters")]
    TooLong { max: usize },
    #[error("must not contain control characters")]
    ControlCharacter,
}

/// Checks that `value` is non-empty, at most `max` characters, free of control characters
/// (PostgreSQL cannot store NUL; the others are never intended in a name) and does not begin or
/// end with whitespace. Nothing is trimmed: what is stored is what was sent.
pub fn check_text(value: &str, max: usize) -> Result<(), TextError> {
    if value.is_empty() {
        return Err(TextError::Empty);
    }
    if value.trim() != value {
        return Err(TextError::SurroundingWhitespace);
    }
    if value.chars().count() > max {
        return Err(TextError::TooLong { max });
    }
    if value.chars().any(char::is_control) {
        return Err(TextError::ControlCharacter);
    }
    Ok(())
}

/// The first `MAX_NAME_CHARS` characters of `name`: a display name derived from a topic may be
/// shortened, an id may not.
pub fn truncate_name(name: &str) -> String {
    name.chars().take(MAX_NAME_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_rules_name_each_fault() {
        assert_eq!(check_text("Boiler 7", MAX_NAME_CHARS), Ok(()));
        assert_eq!(check_text("", 10), Err(TextError::Empty));
        assert_eq!(check_text(" a", 10), Err(TextError::SurroundingWhitespace));
        assert_eq!(check_text("a\n", 10), Err(TextError::SurroundingWhitespace));
        assert_eq!(check_text("ééé", 2), Err(TextError::TooLong { max: 2 }));
        assert_eq!(check_text("ééé", 3), Ok(()));
        assert_eq!(check_text("a\0b", 10), Err(TextError::ControlCharacter));
        assert_eq!(
            TextError::TooLong { max: 200 }.to_string(),
            "must be at most 200 characters"
        );
    }
}
