//! The one duration grammar of the worker framework.
//!
//! The `#[handler]` attribute (`base = 250ms`, `cap = "1h"`), the environment
//! (`WORKER_RETRY_CAP=1h`, `WORKER_DEDUP_RETENTION=7d`) and the command line (`--since 2h`) all
//! read durations with [`parse`], so a value that works in one place works in every other:
//!
//! ```text
//! duration = term+                       e.g. 250ms  2s  5m  1h  7d  1h30m  1_500ms
//! term     = number unit
//! number   = digit (digit | "_")*        a whole number; `_` separates digits
//! unit     = "ms" | "s" | "m" | "h" | "d"
//! ```
//!
//! Several terms are added up and must go from the largest unit down, each unit once (`1h30m`,
//! not `30m1h` or `1h1h`), as in Prometheus and Go. There are no fractions (`1500ms`, not
//! `1.5s`), no spaces inside (`250ms`, not `250 ms`; spaces around the value are ignored), no
//! signs, and no units longer than a day: weeks, months and years are ambiguous (a month is not
//! a fixed number of days), so write `30d`.
//!
//! This crate exists because the grammar must be the same in the proc-macro crate and in the
//! runtime, and a proc-macro crate cannot depend on the runtime (it is the other way round).
//!
//! ```
//! use std::time::Duration;
//!
//! assert_eq!(worker_duration::parse("250ms"), Ok(Duration::from_millis(250)));
//! assert_eq!(worker_duration::parse("1h30m"), Ok(Duration::from_secs(5_400)));
//! assert!(worker_duration::parse("5 fortnights").is_err());
//! ```

use std::time::Duration;

/// What a duration looks like, for error messages (the module docs have the grammar).
pub const FORMS: &str = "write a whole number and a unit (`ms`, `s`, `m`, `h` or `d`), e.g. \
     `250ms`, `2s`, `5m`, `1h` or `7d`, or several from the largest unit down, e.g. `1h30m`";

/// The units, largest first, with their length in milliseconds.
const UNITS: [(&str, u64); 5] = [
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// Why a text is not a duration. The messages quote the offending part and say what to write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Nothing but whitespace.
    #[error("an empty value is not a duration; {}", FORMS)]
    Empty,
    /// Does not start with a digit (a word, a sign, a unit alone).
    #[error("`{text}` is not a duration; {}", FORMS)]
    NotADuration {
        /// The whole text.
        text: String,
    },
    /// A number without a unit after it.
    #[error("`{number}` needs a unit: `{number}ms`, `{number}s`, `{number}m`, `{number}h` or `{number}d`")]
    MissingUnit {
        /// The number, as written.
        number: String,
    },
    /// A unit that is not one of `ms`, `s`, `m`, `h`, `d`.
    #[error("unknown duration unit `{unit}` in `{text}`; {}", FORMS)]
    UnknownUnit {
        /// The unit, as written (without surrounding spaces).
        unit: String,
        /// The whole text.
        text: String,
    },
    /// A decimal point.
    #[error("`{text}` has a fraction; durations are whole numbers of a unit: write `1500ms`, not `1.5s`")]
    Fraction {
        /// The whole text.
        text: String,
    },
    /// A space between a number and its unit, or between terms.
    #[error("`{text}` has a space inside; write each number and its unit together, e.g. `250ms` or `1h30m`")]
    Space {
        /// The whole text.
        text: String,
    },
    /// Units repeated or not from the largest down (`30m1h`, `1s1s`).
    #[error("`{text}` repeats a unit or puts a smaller unit first; write the units from the largest down, each once, e.g. `1h30m`")]
    OutOfOrder {
        /// The whole text.
        text: String,
    },
    /// More milliseconds than a `u64` holds (about 584 million years).
    #[error("`{text}` is too long a duration")]
    TooLong {
        /// The whole text.
        text: String,
    },
}

/// Parses a duration of the grammar in the crate docs; spaces around it are ignored.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    parse_millis(text).map(Duration::from_millis)
}

/// Writes `duration` in the grammar, largest unit first (`7d`, `1h30m`, `250ms`, `0s`), so that
/// [`parse`] reads it back (sub-millisecond parts are dropped).
///
/// ```
/// use std::time::Duration;
///
/// assert_eq!(worker_duration::format(Duration::from_secs(7 * 24 * 3600)), "7d");
/// assert_eq!(worker_duration::format(Duration::from_secs(5400)), "1h30m");
/// assert_eq!(worker_duration::parse("1h30m").unwrap(), Duration::from_secs(5400));
/// ```
pub fn format(duration: Duration) -> String {
    let mut left = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    if left == 0 {
        return "0s".into();
    }
    let mut text = String::new();
    for (unit, millis) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if left >= millis {
            text.push_str(&format!("{}{unit}", left / millis));
            left %= millis;
        }
    }
    text
}

/// [`parse`], in whole milliseconds (what the grammar can express).
pub fn parse_millis(text: &str) -> Result<u64, DurationError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    let whole = || text.to_owned();
    if !text.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(DurationError::NotADuration { text: whole() });
    }
    let mut rest = text;
    let mut total: u64 = 0;
    // Index into UNITS of the previous term's unit: the next one must come after it.
    let mut previous: Option<usize> = None;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !c.is_ascii_digit() && c != '_')
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_end);
        let unit_end = after
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_end);
        rest = next;
        if number.is_empty() {
            // Cannot happen (the text starts with a digit and every unit ends at one); an error
            // rather than a panic all the same.
            return Err(DurationError::NotADuration { text: whole() });
        }
        if unit.starts_with('.') || unit.starts_with(',') {
            return Err(DurationError::Fraction { text: whole() });
        }
        if unit.is_empty() {
            return Err(DurationError::MissingUnit {
                number: number.to_owned(),
            });
        }
        let Some(index) = UNITS.iter().position(|(name, _)| *name == unit.trim()) else {
            return Err(DurationError::UnknownUnit {
                unit: unit.trim().to_owned(),
                text: whole(),
            });
        };
        if unit.contains(char::is_whitespace) {
            return Err(DurationError::Space { text: whole() });
        }
        if previous.is_some_and(|p| index <= p) {
            return Err(DurationError::OutOfOrder { text: whole() });
        }
        previous = Some(index);
        let too_long = || DurationError::TooLong { text: whole() };
        let count: u64 = number.replace('_', "").parse().map_err(|_| too_long())?;
        total = count
            .checked_mul(UNITS[index].1)
            .and_then(|millis| total.checked_add(millis))
            .ok_or_else(too_long)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> DurationError {
        parse(text).expect_err(text)
    }

    #[test]
    fn every_unit() {
        assert_eq!(parse_millis("250ms"), Ok(250));
        assert_eq!(parse_millis("2s"), Ok(2_000));
        assert_eq!(parse_millis("5m"), Ok(300_000));
        assert_eq!(parse_millis("1h"), Ok(3_600_000));
        assert_eq!(parse_millis("7d"), Ok(7 * 86_400_000));
        assert_eq!(parse_millis("0ms"), Ok(0));
        assert_eq!(parse_millis("1_500ms"), Ok(1_500));
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
    }

    #[test]
    fn terms_add_up_from_the_largest_unit_down() {
        assert_eq!(parse_millis("1h30m"), Ok(5_400_000));
        assert_eq!(parse_millis("1m30s"), Ok(90_000));
        assert_eq!(parse_millis("1d2h3m4s5ms"), Ok(93_784_005));
        assert_eq!(parse_millis("2m5ms"), Ok(120_005));
        assert_eq!(
            err("30m1h"),
            DurationError::OutOfOrder {
                text: "30m1h".into()
            }
        );
        assert!(matches!(err("1s1s"), DurationError::OutOfOrder { .. }));
        assert!(matches!(err("1ms1s"), DurationError::OutOfOrder { .. }));
    }

    #[test]
    fn surrounding_spaces_are_ignored_inner_ones_are_not() {
        assert_eq!(parse_millis("  2s\n"), Ok(2_000));
        assert_eq!(
            err("250 ms"),
            DurationError::Space {
                text: "250 ms".into()
            }
        );
        assert!(matches!(err("1h 30m"), DurationError::Space { .. }));
    }

    #[test]
    fn what_is_not_a_duration() {
        assert_eq!(err(""), DurationError::Empty);
        assert_eq!(err("   "), DurationError::Empty);
        for text in ["soon", "ms", "-2s", "+2s", "_5s", "s5"] {
            assert_eq!(err(text), DurationError::NotADuration { text: text.into() });
        }
        assert_eq!(
            err("250"),
            DurationError::MissingUnit {
                number: "250".into()
            }
        );
        assert_eq!(
            err("1h30"),
            DurationError::MissingUnit {
                number: "30".into()
            }
        );
        assert_eq!(
            err("10x"),
            DurationError::UnknownUnit {
                unit: "x".into(),
                text: "10x".into()
            }
        );
        assert_eq!(
            err("5 fortnights"),
            DurationError::UnknownUnit {
                unit: "fortnights".into(),
                text: "5 fortnights".into()
            }
        );
        for text in ["2w", "1y", "1M", "1us", "2S", "2sec", "2hours"] {
            assert!(
                matches!(err(text), DurationError::UnknownUnit { .. }),
                "{text}"
            );
        }
        assert_eq!(
            err("1.5s"),
            DurationError::Fraction {
                text: "1.5s".into()
            }
        );
        assert!(matches!(err("1,5s"), DurationError::Fraction { .. }));
    }

    #[test]
    fn too_long() {
        assert!(matches!(
            err("99999999999999999999ms"),
            DurationError::TooLong { .. }
        ));
        assert!(matches!(
            err("999999999999999999m"),
            DurationError::TooLong { .. }
        ));
        assert!(matches!(
            err(&format!("{}ms1ms", u64::MAX)),
            DurationError::OutOfOrder { .. }
        ));
        assert!(matches!(
            err(&format!("1s{}ms", u64::MAX)),
            DurationError::TooLong { .. }
        ));
        assert_eq!(parse_millis(&format!("{}ms", u64::MAX)), Ok(u64::MAX));
    }

    #[test]
    fn messages_say_what_to_write() {
        let unknown = err("5 fortnights").to_string();
        assert!(unknown.starts_with("unknown duration unit `fortnights` in `5 fortnights`"));
        assert!(unknown.contains("`ms`, `s`, `m`, `h` or `d`"), "{unknown}");
        assert!(unknown.contains("`1h30m`"), "{unknown}");
        assert_eq!(
            err("250").to_string(),
            "`250` needs a unit: `250ms`, `250s`, `250m`, `250h` or `250d`"
        );
    }
}
