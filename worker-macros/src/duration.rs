//! Duration literals in `#[handler]` arguments: `250ms`, `"2s"`, `"1m"`.

use syn::{Expr, ExprLit, Lit};

/// The units a duration may be written in, with their length in milliseconds.
const UNITS: [(&str, u64); 3] = [("ms", 1), ("s", 1_000), ("m", 60_000)];

/// Parses `<digits><unit>` into milliseconds, e.g. `"250ms"` → 250 and `"2m"` → 120 000.
///
/// The error text says what is wrong with the literal; the caller adds which key it belongs to.
pub(crate) fn parse_millis(text: &str) -> Result<u64, String> {
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit() && c != '_')
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(digits_end);
    if !digits.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("`{text}` is not a duration; write a whole number and a unit, e.g. `250ms`, `2s` or `1m`"));
    }
    let Some(&(_, per_unit)) = UNITS.iter().find(|(name, _)| *name == unit) else {
        return Err(if unit.is_empty() {
            format!("`{text}` needs a unit: `{text}ms`, `{text}s` or `{text}m`")
        } else {
            format!("unknown duration unit `{unit}` in `{text}`; use `ms`, `s` or `m`")
        });
    };
    digits
        .replace('_', "")
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(per_unit))
        .ok_or_else(|| format!("`{text}` is too long a duration"))
}

/// Reads a duration written as `250ms` (a suffixed integer) or `"250ms"` (a string).
pub(crate) fn from_expr(value: &Expr) -> Result<u64, String> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) => parse_millis(&lit.value()),
        Expr::Lit(ExprLit {
            lit: Lit::Int(lit), ..
        }) => parse_millis(&format!("{}{}", lit.base10_digits(), lit.suffix())),
        Expr::Lit(ExprLit {
            lit: Lit::Float(_), ..
        }) => Err("durations are whole numbers of a unit: write `1500ms`, not `1.5s`".to_owned()),
        _ => Err("expected a duration such as `250ms`, `2s`, `1m` or `\"250ms\"`".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_millis("250ms"), Ok(250));
        assert_eq!(parse_millis("2s"), Ok(2_000));
        assert_eq!(parse_millis("1m"), Ok(60_000));
        assert_eq!(parse_millis("0ms"), Ok(0));
        assert_eq!(parse_millis("1_500ms"), Ok(1_500));
    }

    #[test]
    fn rejects_what_is_not_a_duration() {
        assert!(parse_millis("").unwrap_err().contains("not a duration"));
        assert!(parse_millis("ms").unwrap_err().contains("not a duration"));
        assert!(parse_millis("250").unwrap_err().contains("needs a unit"));
        assert!(parse_millis("2h")
            .unwrap_err()
            .contains("unknown duration unit `h`"));
        assert!(parse_millis("2 s")
            .unwrap_err()
            .contains("unknown duration unit"));
        assert!(parse_millis("-2s").unwrap_err().contains("not a duration"));
        assert!(parse_millis("99999999999999999999m")
            .unwrap_err()
            .contains("too long"));
        assert!(parse_millis("999999999999999999m")
            .unwrap_err()
            .contains("too long"));
    }

    #[test]
    fn literals() {
        let millis = |src: &str| from_expr(&syn::parse_str(src).unwrap());
        assert_eq!(millis("250ms"), Ok(250));
        assert_eq!(millis("2s"), Ok(2_000));
        assert_eq!(millis("\"1m\""), Ok(60_000));
        assert!(millis("1.5s").unwrap_err().contains("1500ms"));
        assert!(millis("250").unwrap_err().contains("needs a unit"));
        assert!(millis("FIVE_SECONDS")
            .unwrap_err()
            .contains("expected a duration"));
    }
}
