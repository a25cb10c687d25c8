//! Parses the arguments of `#[handler(...)]`.
//!
//! Syntax errors (`retry 3`, a missing comma) stop the parse; everything else (an unknown or
//! repeated key, a bad value) is recorded and the parse goes on, so all of them are reported at once.

use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::{Expr, ExprLit, ExprUnary, Ident, Lit, LitStr, Token, UnOp};

use crate::duration;
use crate::errors::Errors;

mod kw {
    syn::custom_keyword!(event);
    syn::custom_keyword!(dedup);
    syn::custom_keyword!(retry);
    syn::custom_keyword!(name);
    syn::custom_keyword!(concurrency);
    syn::custom_keyword!(base);
    syn::custom_keyword!(cap);
    syn::custom_keyword!(jitter);
    syn::custom_keyword!(partition_key);
    syn::custom_keyword!(partitions);
    syn::custom_keyword!(breaker);
    syn::custom_keyword!(version);
}

/// The keys `#[handler]` understands, in the order the docs list them.
const KEYS: &str =
    "event, dedup, retry, name, concurrency, base, cap, jitter, partition_key, partitions, breaker, version";

/// Most partitions a handler may declare (worker-core's `partition::MAX_PARTITIONS`).
const MAX_PARTITIONS: u32 = 256;

/// Longest handler name: it becomes part of queue names, which AMQP limits to 255 bytes.
pub(crate) const MAX_NAME_LEN: usize = 200;

/// A value and the expression it was written as, to point at it later.
pub(crate) struct Setting<T> {
    pub(crate) value: T,
    pub(crate) expr: Expr,
}

/// The arguments of one `#[handler(...)]`, each checked on its own.
#[derive(Default)]
pub(crate) struct Args {
    /// The routing key; `None` also when it was given but invalid (then `seen` has it).
    pub(crate) event: Option<String>,
    /// The `dedup` flag, kept as a token to point at it.
    pub(crate) dedup: Option<kw::dedup>,
    pub(crate) retry: Option<u32>,
    pub(crate) name: Option<String>,
    pub(crate) concurrency: Option<u32>,
    /// Where `concurrency` was written, to point at it.
    concurrency_at: Option<Expr>,
    pub(crate) base: Option<Setting<u64>>,
    pub(crate) cap: Option<Setting<u64>>,
    pub(crate) jitter: Option<u64>,
    /// The payload field partitioned events are keyed by, with its literal to point at it.
    pub(crate) partition_key: Option<Setting<String>>,
    /// How many partition queues, with its literal to point at it.
    pub(crate) partitions: Option<Setting<u32>>,
    /// `breaker = off` (`Some(0)`) or `breaker = N`: different events failing in a row open it.
    pub(crate) breaker: Option<u32>,
    /// `version = N`: the version of the event's shape the handler's type is.
    pub(crate) version: Option<u32>,
    /// The keys written so far, valid or not.
    seen: Vec<&'static str>,
    /// What is wrong with the arguments, beyond syntax.
    pub(crate) errors: Errors,
}

impl Args {
    /// Whether `event = ...` was written at all (even with a bad value).
    pub(crate) fn has_event(&self) -> bool {
        self.seen.contains(&"event")
    }

    /// Parses one `key` or `key = value`.
    fn parse_one(&mut self, input: ParseStream<'_>) -> syn::Result<()> {
        if input.peek(kw::dedup) {
            let key: kw::dedup = input.parse()?;
            if input.peek(Token![=]) {
                let eq: Token![=] = input.parse()?;
                let value: Expr = input.parse()?;
                self.errors.at(
                    quote::quote!(#eq #value),
                    "`dedup` is a flag: write `dedup` alone, or leave it out",
                );
            }
            if self.first("dedup", key) {
                self.dedup = Some(key);
            }
        } else if input.peek(kw::event) {
            let (key, value) = key_value::<kw::event>(input, "event = \"OrderPlaced\"")?;
            let event = string(&value, "event", "event = \"OrderPlaced\"").and_then(|lit| {
                let event = lit.value();
                if event.is_empty() {
                    Err(syn::Error::new_spanned(
                        &lit,
                        "`event` cannot be empty: it is the routing key",
                    ))
                } else {
                    Ok(event)
                }
            });
            self.set(key, "event", event, |args, v| args.event = Some(v));
        } else if input.peek(kw::retry) {
            let (key, value) = key_value::<kw::retry>(input, "retry = 5")?;
            let retry = positive(
                &value,
                "retry",
                "`retry` counts all attempts, the first included, so it must be at least 1 \
                 (`retry = 1` means no retries)",
            );
            self.set(key, "retry", retry, |args, v| args.retry = Some(v));
        } else if input.peek(kw::name) {
            let (key, value) = key_value::<kw::name>(input, "name = \"charge-on-order-placed\"")?;
            let name =
                string(&value, "name", "name = \"charge-on-order-placed\"").and_then(|lit| {
                    let name = lit.value();
                    check_name(&name).map_err(|msg| syn::Error::new_spanned(&lit, msg))?;
                    Ok(name)
                });
            self.set(key, "name", name, |args, v| args.name = Some(v));
        } else if input.peek(kw::concurrency) {
            let (key, value) = key_value::<kw::concurrency>(input, "concurrency = 8")?;
            let concurrency = positive(&value, "concurrency", "`concurrency` must be at least 1");
            self.concurrency_at.get_or_insert_with(|| value.clone());
            self.set(key, "concurrency", concurrency, |args, v| {
                args.concurrency = Some(v)
            });
        } else if input.peek(kw::base) {
            let (key, value) = key_value::<kw::base>(input, "base = 250ms")?;
            let base = delay(&value, "base").and_then(|millis| {
                if millis == 0 {
                    Err(syn::Error::new_spanned(
                        &value,
                        "`base` must be greater than zero",
                    ))
                } else {
                    Ok(Setting {
                        value: millis,
                        expr: value.clone(),
                    })
                }
            });
            self.set(key, "base", base, |args, v| args.base = Some(v));
        } else if input.peek(kw::cap) {
            let (key, value) = key_value::<kw::cap>(input, "cap = 30s")?;
            let cap = delay(&value, "cap").map(|millis| Setting {
                value: millis,
                expr: value.clone(),
            });
            self.set(key, "cap", cap, |args, v| args.cap = Some(v));
        } else if input.peek(kw::jitter) {
            let (key, value) = key_value::<kw::jitter>(input, "jitter = 1s")?;
            let jitter = delay(&value, "jitter");
            self.set(key, "jitter", jitter, |args, v| args.jitter = Some(v));
        } else if input.peek(kw::partition_key) {
            let (key, value) =
                key_value::<kw::partition_key>(input, "partition_key = \"orderId\"")?;
            let field = string(&value, "partition_key", "partition_key = \"orderId\"").and_then(|lit| {
                let field = lit.value();
                if field.is_empty() {
                    Err(syn::Error::new_spanned(
                        &lit,
                        "`partition_key` cannot be empty: it names the payload field that identifies the entity",
                    ))
                } else {
                    Ok(Setting {
                        value: field,
                        expr: value.clone(),
                    })
                }
            });
            self.set(key, "partition_key", field, |args, v| {
                args.partition_key = Some(v)
            });
        } else if input.peek(kw::partitions) {
            let (key, value) = key_value::<kw::partitions>(input, "partitions = 8")?;
            let partitions = positive(&value, "partitions", "`partitions` must be at least 1")
                .and_then(|n| {
                    if n > MAX_PARTITIONS {
                        Err(syn::Error::new_spanned(
                            &value,
                            format_args!("`partitions` is at most {MAX_PARTITIONS}: each partition is a queue with its own consumer"),
                        ))
                    } else {
                        Ok(Setting {
                            value: n,
                            expr: value.clone(),
                        })
                    }
                });
            self.set(key, "partitions", partitions, |args, v| {
                args.partitions = Some(v)
            });
        } else if input.peek(kw::breaker) {
            let (key, value) = key_value::<kw::breaker>(input, "breaker = 10")?;
            let breaker = match &value {
                Expr::Path(path) if path.path.is_ident("off") => Ok(0),
                Expr::Lit(ExprLit {
                    lit: Lit::Int(_), ..
                })
                | Expr::Unary(_) => positive(
                    &value,
                    "breaker",
                    "`breaker` counts the different events failing in a row that open it, so it is at least 1; write `breaker = off` to turn it off",
                ),
                _ => Err(syn::Error::new_spanned(
                    &value,
                    "`breaker` takes `off` or how many different events failing in a row open it, e.g. `breaker = 10`",
                )),
            };
            self.set(key, "breaker", breaker, |args, v| args.breaker = Some(v));
        } else if input.peek(kw::version) {
            let (key, value) = key_value::<kw::version>(input, "version = 2")?;
            let version = positive(
                &value,
                "version",
                "`version` is the version of the event's shape the handler's type is; versions start at 1",
            );
            self.set(key, "version", version, |args, v| args.version = Some(v));
        } else {
            let key = input.call(Ident::parse_any)?;
            if input.peek(Token![=]) {
                input.parse::<Token![=]>()?;
                input.parse::<Expr>()?;
            }
            self.errors.at(
                &key,
                format_args!("unknown `#[handler]` key `{key}`; expected one of: {KEYS}"),
            );
        }
        Ok(())
    }

    /// Records that `key` was written; `false` (and an error at `key`) if it already was.
    fn first(&mut self, name: &'static str, key: impl quote::ToTokens) -> bool {
        if self.seen.contains(&name) {
            self.errors.at(key, format_args!("`{name}` set twice"));
            false
        } else {
            self.seen.push(name);
            true
        }
    }

    /// Stores a parsed value, or records why it is invalid; a repeated key is an error either way.
    fn set<T>(
        &mut self,
        key: impl quote::ToTokens,
        name: &'static str,
        value: syn::Result<T>,
        store: impl FnOnce(&mut Self, T),
    ) {
        let first = self.first(name, key);
        match value {
            Ok(value) if first => store(self, value),
            Ok(_) => {}
            Err(error) => self.errors.push(error),
        }
    }

    /// Checks what no single key can: that `cap` is not below `base`, and that `partition_key`
    /// and `partitions` come together and without `concurrency`.
    fn check_together(&mut self) {
        match (&self.partition_key, &self.partitions) {
            (Some(key), None) => self.errors.at(
                &key.expr,
                "`partition_key` needs `partitions = N` too: how many partition queues to spread the entities over",
            ),
            (None, Some(n)) => self.errors.at(
                &n.expr,
                "`partitions` needs `partition_key = \"field\"` too: the payload field that identifies the entity",
            ),
            _ => {}
        }
        if let (true, Some(at)) = (self.seen.contains(&"partitions"), &self.concurrency_at) {
            self.errors.at(
                at,
                "`concurrency` cannot be set on a partitioned handler: it handles one event per partition at a time, so its concurrency is `partitions`",
            );
        }
        if let (Some(base), Some(cap)) = (&self.base, &self.cap) {
            if cap.value < base.value {
                self.errors.at(
                    &cap.expr,
                    format_args!(
                        "`cap` ({}ms) is below `base` ({}ms): delays start at `base` and grow up to `cap`",
                        cap.value, base.value
                    ),
                );
            }
        }
    }
}

impl Parse for Args {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut args = Args::default();
        while !input.is_empty() {
            args.parse_one(input)?;
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        args.check_together();
        Ok(args)
    }
}

/// Parses `key = value`, with a hint when the `=` is missing.
fn key_value<K: Parse + quote::ToTokens>(
    input: ParseStream<'_>,
    example: &str,
) -> syn::Result<(K, Expr)> {
    let key: K = input.parse()?;
    if !input.peek(Token![=]) {
        return Err(syn::Error::new_spanned(
            &key,
            format_args!("expected a value: `{example}`"),
        ));
    }
    input.parse::<Token![=]>()?;
    let value: Expr = input.parse()?;
    Ok((key, value))
}

/// A string literal value.
fn string(value: &Expr, key: &str, example: &str) -> syn::Result<LitStr> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) => Ok(lit.clone()),
        _ => Err(syn::Error::new_spanned(
            value,
            format_args!("`{key}` takes a string: `{example}`"),
        )),
    }
}

/// An integer literal of at least 1; `zero` is the message for 0 (and negative numbers).
fn positive(value: &Expr, key: &str, zero: &str) -> syn::Result<u32> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Int(lit), ..
        }) if lit.suffix().is_empty() => match lit.base10_parse::<u32>() {
            Ok(0) => Err(syn::Error::new_spanned(lit, zero)),
            Ok(n) => Ok(n),
            Err(_) => Err(syn::Error::new_spanned(
                lit,
                format_args!("`{key}` is too large"),
            )),
        },
        Expr::Unary(ExprUnary {
            op: UnOp::Neg(_), ..
        }) => Err(syn::Error::new_spanned(value, zero)),
        _ => Err(syn::Error::new_spanned(
            value,
            format_args!("`{key}` takes a whole number without a suffix, e.g. `{key} = 5`"),
        )),
    }
}

/// A duration, in milliseconds.
fn delay(value: &Expr, key: &str) -> syn::Result<u64> {
    duration::from_expr(value)
        .map_err(|msg| syn::Error::new_spanned(value, format_args!("`{key}`: {msg}")))
}

/// Checks a handler name: it names the handler's queue, dedup rows and metrics.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the handler name cannot be empty".to_owned());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "the handler name is {} bytes long; the limit is {MAX_NAME_LEN}",
            name.len()
        ));
    }
    if let Some(bad) = name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "the handler name `{name}` contains {bad:?}; use ASCII letters, digits, `-`, `_` and `.`"
        ));
    }
    Ok(())
}

/// The name a handler gets without `name = "..."`: its function's name with `_` turned into `-`.
pub(crate) fn default_name(function: &Ident) -> String {
    function.unraw().to_string().replace('_', "-")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> Args {
        syn::parse_str(src).unwrap_or_else(|e| panic!("`{src}` did not parse: {e}"))
    }

    fn errors(src: &str) -> Vec<String> {
        match parse(src).errors.finish() {
            Ok(()) => Vec::new(),
            Err(e) => e.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn all_keys() {
        let args = parse(
            r#"event = "OrderPlaced", dedup, retry = 12, name = "charge.v2", concurrency = 8,
               base = 250ms, cap = "1h", jitter = 0s,"#,
        );
        assert!(args.errors.finish().is_ok());
        assert_eq!(args.event.as_deref(), Some("OrderPlaced"));
        assert!(args.dedup.is_some());
        assert_eq!(args.retry, Some(12));
        assert_eq!(args.name.as_deref(), Some("charge.v2"));
        assert_eq!(args.concurrency, Some(8));
        assert_eq!(args.base.map(|b| b.value), Some(250));
        assert_eq!(args.cap.map(|c| c.value), Some(3_600_000));
        assert_eq!(args.jitter, Some(0));
    }

    #[test]
    fn defaults_are_absent() {
        let args = parse(r#"event = "OrderPlaced""#);
        assert!(args.has_event());
        assert!(args.dedup.is_none() && args.retry.is_none() && args.name.is_none());
        assert!(args.concurrency.is_none() && args.base.is_none() && args.cap.is_none());
        assert!(args.jitter.is_none());
        assert!(!parse("").has_event());
    }

    #[test]
    fn every_mistake_is_reported() {
        let found =
            errors(r#"event = "", retry = 0, retry = 3, foo = 1, bar, base = 0ms, jitter = 2w"#);
        assert_eq!(
            found,
            [
                "`event` cannot be empty: it is the routing key",
                "`retry` counts all attempts, the first included, so it must be at least 1 (`retry = 1` means no retries)",
                "`retry` set twice",
                "unknown `#[handler]` key `foo`; expected one of: event, dedup, retry, name, concurrency, base, cap, jitter, partition_key, partitions, breaker, version",
                "unknown `#[handler]` key `bar`; expected one of: event, dedup, retry, name, concurrency, base, cap, jitter, partition_key, partitions, breaker, version",
                "`base` must be greater than zero",
                "`jitter`: unknown duration unit `w` in `2w`; write a whole number and a unit (`ms`, `s`, `m`, `h` or `d`), e.g. `250ms`, `2s`, `5m`, `1h` or `7d`, or several from the largest unit down, e.g. `1h30m`",
            ]
        );
        assert!(parse(r#"event = "", event = "X""#).has_event());
    }

    #[test]
    fn value_kinds() {
        assert_eq!(
            errors("event = OrderPlaced"),
            ["`event` takes a string: `event = \"OrderPlaced\"`"]
        );
        assert_eq!(errors("retry = -1")[0], errors("retry = 0")[0]);
        assert_eq!(
            errors("concurrency = 8u8"),
            ["`concurrency` takes a whole number without a suffix, e.g. `concurrency = 5`"]
        );
        assert_eq!(errors("retry = 99999999999"), ["`retry` is too large"]);
        assert_eq!(
            errors("dedup = true"),
            ["`dedup` is a flag: write `dedup` alone, or leave it out"]
        );
        assert_eq!(errors("base = 2s, cap = 1s"), ["`cap` (1000ms) is below `base` (2000ms): delays start at `base` and grow up to `cap`"]);
        assert!(errors("base = 2s, cap = 2s").is_empty());
        assert!(syn::parse_str::<Args>("retry 3").is_err());
        assert!(syn::parse_str::<Args>("retry = 3 dedup").is_err());
    }

    #[test]
    fn version() {
        assert_eq!(parse(r#"event = "E", version = 3"#).version, Some(3));
        assert_eq!(parse(r#"event = "E""#).version, None);
        assert_eq!(
            errors("version = 0"),
            ["`version` is the version of the event's shape the handler's type is; versions start at 1"]
        );
    }

    #[test]
    fn breaker() {
        assert_eq!(parse(r#"event = "E", breaker = 5"#).breaker, Some(5));
        assert_eq!(parse(r#"event = "E", breaker = off"#).breaker, Some(0));
        assert_eq!(parse(r#"event = "E""#).breaker, None);
        assert_eq!(
            errors("breaker = 0"),
            ["`breaker` counts the different events failing in a row that open it, so it is at least 1; write `breaker = off` to turn it off"]
        );
        assert_eq!(
            errors("breaker = on"),
            ["`breaker` takes `off` or how many different events failing in a row open it, e.g. `breaker = 10`"]
        );
    }

    #[test]
    fn partitions() {
        let args = parse(r#"event = "OrderShipped", partition_key = "orderId", partitions = 8"#);
        assert!(args.errors.finish().is_ok());
        let args = parse(r#"event = "OrderShipped", partition_key = "orderId", partitions = 8"#);
        assert_eq!(
            args.partition_key.map(|k| k.value).as_deref(),
            Some("orderId")
        );
        assert_eq!(args.partitions.map(|n| n.value), Some(8));
        assert_eq!(
            errors(r#"partition_key = "orderId""#),
            ["`partition_key` needs `partitions = N` too: how many partition queues to spread the entities over"]
        );
        assert!(errors("partitions = 4")[0].starts_with("`partitions` needs `partition_key"));
        assert_eq!(errors(r#"partition_key = "", partitions = 0"#).len(), 2);
        assert!(errors(r#"partition_key = "k", partitions = 257"#)[0].contains("at most 256"));
        assert!(
            errors(r#"partition_key = "k", partitions = 2, concurrency = 4"#)[0]
                .starts_with("`concurrency` cannot be set on a partitioned handler")
        );
    }

    #[test]
    fn names() {
        let ident = |s: &str| syn::parse_str::<Ident>(s).unwrap();
        assert_eq!(
            default_name(&ident("charge_on_order_placed")),
            "charge-on-order-placed"
        );
        assert_eq!(default_name(&ident("r#type")), "type");
        assert_eq!(check_name("charge-on-order_placed.v2"), Ok(()));
        assert!(check_name("").is_err());
        assert!(check_name("a b").unwrap_err().contains("' '"));
        assert!(check_name("größe").is_err());
        assert!(check_name(&"a".repeat(MAX_NAME_LEN)).is_ok());
        assert!(check_name(&"a".repeat(MAX_NAME_LEN + 1))
            .unwrap_err()
            .contains("201 bytes"));
        assert!(errors(r#"name = "a/b""#)[0].contains("'/'"));
    }
}
