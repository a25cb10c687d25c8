//! Validation of SQL identifiers that come from configuration (schema names).

use std::fmt;

/// A Postgres identifier that is safe to splice into SQL: lowercase ASCII letters, digits and
/// `_`, starting with a letter or `_`, at most 63 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identifier(String);

/// A configured name that is not a valid identifier.
#[derive(Debug, thiserror::Error)]
#[error("invalid SQL identifier {0:?}: use 1-63 lowercase ASCII letters, digits or `_`, starting with a letter or `_`")]
pub struct InvalidIdentifier(pub String);

impl Identifier {
    /// Validates `name`.
    pub fn new(name: &str) -> Result<Self, InvalidIdentifier> {
        let mut chars = name.chars();
        let valid_start = matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_');
        let valid = valid_start
            && name.len() <= 63
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if valid {
            Ok(Self(name.to_owned()))
        } else {
            Err(InvalidIdentifier(name.to_owned()))
        }
    }

    /// The identifier closest to `name`: lowercased, every other character than a letter, digit
    /// or `_` made `_`, a leading digit prefixed with `_`, cut to 63 bytes (`order-worker` →
    /// `order_worker`). Used for the default schema of an application.
    pub fn from_name(name: &str) -> Self {
        let mut id: String = name
            .chars()
            .map(|c| {
                let c = c.to_ascii_lowercase();
                if c.is_ascii_lowercase() || c.is_ascii_digit() {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if !id.starts_with(|c: char| c.is_ascii_lowercase() || c == '_') {
            id.insert(0, '_');
        }
        id.truncate(63);
        Self(id)
    }

    /// The identifier, quoted for SQL.
    pub fn quoted(&self) -> String {
        format!("\"{}\"", self.0)
    }

    /// The bare name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_names_and_rejects_injection() {
        assert!(Identifier::new("public").is_ok());
        assert!(Identifier::new("_t_1").is_ok());
        for bad in [
            "",
            "1abc",
            "Public",
            "a-b",
            "a;drop table x",
            "a\"b",
            &"a".repeat(64),
        ] {
            assert!(Identifier::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn from_name_makes_any_name_a_valid_identifier() {
        for (name, id) in [
            ("order-worker", "order_worker"),
            ("Billing.Worker", "billing_worker"),
            ("9lives", "_9lives"),
            ("", "_"),
            ("käse", "k_se"),
        ] {
            let made = Identifier::from_name(name);
            assert_eq!(made.as_str(), id);
            assert!(Identifier::new(made.as_str()).is_ok(), "{name}");
        }
        assert_eq!(Identifier::from_name(&"a".repeat(80)).as_str().len(), 63);
    }
}
