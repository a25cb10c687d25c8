//! Duration literals in `#[handler]` arguments: `250ms`, `"2s"`, `1h`, `"1h30m"`.
//!
//! The grammar is `worker_duration`'s, the same one the environment variables use.

use syn::{Expr, ExprLit, Lit};

/// Reads a duration written as `250ms` (a suffixed integer) or `"250ms"` (a string), in
/// milliseconds. The error text says what is wrong with the literal; the caller adds which key it
/// belongs to and points at the literal.
pub(crate) fn from_expr(value: &Expr) -> Result<u64, String> {
    let text = match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) => lit.value(),
        // `1h30m` is the integer `1` with the suffix `h30m`.
        Expr::Lit(ExprLit {
            lit: Lit::Int(lit), ..
        }) => format!("{}{}", lit.base10_digits(), lit.suffix()),
        // `1.5s` reads as a float with the suffix `s`: let the grammar explain that it has no
        // fractions.
        Expr::Lit(ExprLit {
            lit: Lit::Float(lit),
            ..
        }) => format!("{}{}", lit.base10_digits(), lit.suffix()),
        _ => {
            return Err(format!(
                "expected a duration such as `250ms`, `2s`, `1h` or `\"1h30m\"`; {}",
                worker_duration::FORMS
            ))
        }
    };
    worker_duration::parse_millis(&text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(src: &str) -> Result<u64, String> {
        from_expr(&syn::parse_str(src).unwrap())
    }

    #[test]
    fn literals() {
        assert_eq!(millis("250ms"), Ok(250));
        assert_eq!(millis("2s"), Ok(2_000));
        assert_eq!(millis("\"1m\""), Ok(60_000));
        assert_eq!(millis("1h"), Ok(3_600_000));
        assert_eq!(millis("\"1h\""), Ok(3_600_000));
        assert_eq!(millis("7d"), Ok(7 * 86_400_000));
        assert_eq!(millis("1h30m"), Ok(5_400_000));
        assert_eq!(millis("\"1h30m\""), Ok(5_400_000));
        assert_eq!(millis("1_500ms"), Ok(1_500));
    }

    #[test]
    fn mistakes() {
        assert!(millis("1.5s").unwrap_err().contains("`1500ms`, not `1.5s`"));
        assert!(millis("250").unwrap_err().contains("needs a unit"));
        assert!(millis("\"5 fortnights\"")
            .unwrap_err()
            .starts_with("unknown duration unit `fortnights`"));
        assert!(millis("10x")
            .unwrap_err()
            .starts_with("unknown duration unit `x` in `10x`"));
        assert!(millis("FIVE_SECONDS")
            .unwrap_err()
            .starts_with("expected a duration"));
    }
}
