//! Failure fingerprints: what makes two dead letters "the same problem".

use worker_core::DeadLetterRecord;

/// The error kind plus the first line of `lastError`, with numbers and ids masked, so that one
/// bug hitting many events shows as one group:
///
/// ```
/// # use worker_rabbitmq::dlq::fingerprint::mask;
/// assert_eq!(
///     mask("InvalidAmount: order ord_91 has amount -5"),
///     "InvalidAmount: order <id> has amount -N"
/// );
/// assert_eq!(mask("upstream returned 504 after 30s"), "upstream returned N after Ns");
/// ```
pub fn fingerprint(record: &DeadLetterRecord) -> String {
    let meta = &record.failure_metadata;
    format!("{} {}", meta.error_kind, mask(&meta.last_error))
}

/// The first line of `message` with numbers replaced by `N` and id-like tokens (words that mix
/// letters and digits, such as `ord_91`, UUIDs or hex ids) by `<id>`. A number with a short unit
/// (`30s`, `250ms`) keeps its unit.
pub fn mask(message: &str) -> String {
    let line = message.lines().next().unwrap_or("").trim();
    let mut out = String::with_capacity(line.len());
    let mut token = String::new();
    let flush = |token: &mut String, out: &mut String| {
        if !token.is_empty() {
            out.push_str(&mask_token(token));
            token.clear();
        }
    };
    for c in line.chars() {
        if c.is_alphanumeric() || c == '_' || c == '-' && !token.is_empty() {
            token.push(c);
        } else {
            flush(&mut token, &mut out);
            out.push(c);
        }
    }
    flush(&mut token, &mut out);
    out
}

fn mask_token(token: &str) -> String {
    if !token.chars().any(|c| c.is_ascii_digit()) {
        return token.to_owned();
    }
    let digits_end = token
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(token.len());
    let unit = &token[digits_end..];
    if digits_end > 0 && unit.len() <= 2 && unit.chars().all(|c| c.is_ascii_lowercase()) {
        return format!("N{unit}");
    }
    "<id>".into()
}

#[cfg(test)]
mod tests {
    use super::mask;

    #[test]
    fn masks_numbers_and_ids_but_keeps_words() {
        assert_eq!(
            mask("IssuerUnavailable: card issuer of usr_77 answered 503\nretry later"),
            "IssuerUnavailable: card issuer of <id> answered N"
        );
        assert_eq!(
            mask("no row for 1b9f2e4c-0a9d-4d7e-b1a2-7c3d2e1f0a9b"),
            "no row for <id>"
        );
        assert_eq!(
            mask("panic: index 3 out of range"),
            "panic: index N out of range"
        );
        assert_eq!(mask("took 250ms"), "took Nms");
    }
}
