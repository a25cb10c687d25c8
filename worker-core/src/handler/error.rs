//! Error classes: what a handler returns decides whether a delivery is retried or dead-lettered.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

/// How a failure is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorKind {
    /// Transient: retried with backoff until the attempts run out, then dead-lettered.
    Retryable,
    /// The message can never succeed: dead-lettered on the attempt it happens.
    Poison,
}

impl ErrorKind {
    /// `"retryable"` or `"poison"`, as in the dead-letter record's `errorKind`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Retryable => "retryable",
            ErrorKind::Poison => "poison",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error a handler returns.
///
/// `?` on any error converts it into a **retryable** `HandlerError` (unknown errors are
/// retryable: the conservative choice). Mark poison explicitly with [`HandlerError::poison`],
/// [`Poison`], or [`ResultExt::poison`]:
///
/// ```
/// use worker_core::{HandlerError, ResultExt};
///
/// fn parse_amount(raw: &str) -> Result<i64, HandlerError> {
///     let amount: i64 = raw.parse().poison()?; // a malformed amount will never parse
///     if amount <= 0 {
///         return Err(HandlerError::poison("amount must be positive"));
///     }
///     Ok(amount)
/// }
/// assert!(parse_amount("x").unwrap_err().is_poison());
/// ```
///
/// Like `anyhow::Error`, `HandlerError` does not itself implement `std::error::Error`, so that
/// every error type can convert into it with `?`.
pub struct HandlerError {
    kind: ErrorKind,
    message: String,
    source: Option<Box<dyn StdError + Send + Sync + 'static>>,
    retry_after: Option<Duration>,
}

impl HandlerError {
    /// A retryable failure with a message.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Retryable,
            message: message.into(),
            source: None,
            retry_after: None,
        }
    }

    /// A poison failure with a message: the message is dead-lettered now, without retries.
    pub fn poison(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Poison,
            message: message.into(),
            source: None,
            retry_after: None,
        }
    }

    /// Wraps an error with an explicit kind; the message is the error's type name and its chain.
    pub fn from_error<E>(kind: ErrorKind, error: E) -> Self
    where
        E: StdError + Send + Sync + 'static,
    {
        Self {
            kind,
            message: describe(&error),
            source: Some(Box::new(error)),
            retry_after: None,
        }
    }

    /// Asks for the next attempt to wait at least `wait` (a `Retry-After` from a service that
    /// answered 429 or 503): the retry copy waits `max(wait, the backoff)`, bounded by
    /// `WORKER_RETRY_AFTER_MAX` (15 minutes unless configured), on the broker's delay path like
    /// any retry. It is still one attempt of the handler's retry policy. A poison failure ignores
    /// it (it is never retried); partitioned handlers wait in place.
    ///
    /// ```
    /// use std::time::Duration;
    /// use worker_core::HandlerError;
    ///
    /// let error = HandlerError::retryable("the card issuer answered 429").retry_after(Duration::from_secs(30));
    /// assert_eq!(error.retry_delay(), Some(Duration::from_secs(30)));
    /// ```
    pub fn retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    /// The wait asked for with [`HandlerError::retry_after`], if any.
    pub fn retry_delay(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Whether this failure is retried or dead-lettered now.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// `true` for [`ErrorKind::Poison`].
    pub fn is_poison(&self) -> bool {
        self.kind == ErrorKind::Poison
    }

    /// The text that becomes the dead-letter record's `lastError`.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The underlying error, when the failure came from one.
    pub fn source(&self) -> Option<&(dyn StdError + Send + Sync + 'static)> {
        self.source.as_deref()
    }

    /// Turns this failure into a poison one, keeping its message.
    pub fn into_poison(mut self) -> Self {
        self.kind = ErrorKind::Poison;
        self
    }
}

/// Renders an error as `TypeName: message: cause: cause`, the on-call engineer's view of it.
fn describe<E: StdError + 'static>(error: &E) -> String {
    let type_name = std::any::type_name::<E>();
    let short = match type_name.rsplit("::").next() {
        // `Error` alone says nothing: keep the path (`sqlx_core::error::Error`).
        Some("Error") | None => type_name,
        Some(short) => short,
    };
    let mut text = format!("{short}: {error}");
    let mut cause = error.source();
    while let Some(inner) = cause {
        let line = inner.to_string();
        if !text.ends_with(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        cause = inner.source();
    }
    text
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("retry_after", &self.retry_after)
            .finish()
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failure: {}", self.kind, self.message)
    }
}

impl<E> From<E> for HandlerError
where
    E: StdError + Send + Sync + 'static,
{
    fn from(error: E) -> Self {
        HandlerError::from_error(ErrorKind::Retryable, error)
    }
}

/// Wraps an error to mark it poison: `Err(Poison(e))?` dead-letters the message now.
#[derive(Debug)]
pub struct Poison<E>(pub E);

/// Wraps an error to mark it retryable explicitly (the default for `?` anyway).
#[derive(Debug)]
pub struct Retryable<E>(pub E);

impl<E: StdError + Send + Sync + 'static> From<Poison<E>> for HandlerError {
    fn from(Poison(error): Poison<E>) -> Self {
        HandlerError::from_error(ErrorKind::Poison, error)
    }
}

impl<E: StdError + Send + Sync + 'static> From<Retryable<E>> for HandlerError {
    fn from(Retryable(error): Retryable<E>) -> Self {
        HandlerError::from_error(ErrorKind::Retryable, error)
    }
}

/// One-word classification on a `Result`: `.poison()?` or `.retryable()?`.
pub trait ResultExt<T> {
    /// Converts the error into a poison [`HandlerError`].
    fn poison(self) -> Result<T, HandlerError>;
    /// Converts the error into a retryable [`HandlerError`].
    fn retryable(self) -> Result<T, HandlerError>;
}

impl<T, E: StdError + Send + Sync + 'static> ResultExt<T> for Result<T, E> {
    fn poison(self) -> Result<T, HandlerError> {
        self.map_err(|e| HandlerError::from_error(ErrorKind::Poison, e))
    }
    fn retryable(self) -> Result<T, HandlerError> {
        self.map_err(|e| HandlerError::from_error(ErrorKind::Retryable, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("upstream returned 504 after 30s")]
    struct PaymentGatewayTimeout;

    fn fails() -> Result<(), PaymentGatewayTimeout> {
        Err(PaymentGatewayTimeout)
    }

    #[test]
    fn question_mark_is_retryable_and_names_the_error_type() {
        let run = || -> Result<(), HandlerError> {
            fails()?;
            Ok(())
        };
        let err = run().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Retryable);
        assert_eq!(
            err.message(),
            "PaymentGatewayTimeout: upstream returned 504 after 30s"
        );
    }

    #[test]
    fn database_and_io_errors_are_retryable() {
        let from = |e: sqlx::Error| HandlerError::from(e).kind();
        assert_eq!(from(sqlx::Error::PoolTimedOut), ErrorKind::Retryable);
        assert_eq!(
            from(sqlx::Error::Io(std::io::Error::other("connection reset"))),
            ErrorKind::Retryable
        );
        assert_eq!(
            from(sqlx::Error::Protocol("unexpected message".into())),
            ErrorKind::Retryable
        );
        let err = HandlerError::from(sqlx::Error::PoolTimedOut);
        assert!(
            err.message()
                .starts_with("sqlx_core::error::Error: pool timed out"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn poison_markers() {
        let err: HandlerError = Poison(PaymentGatewayTimeout).into();
        assert!(err.is_poison());
        assert!(fails().poison().unwrap_err().is_poison());
        assert!(!fails().retryable().unwrap_err().is_poison());
        assert!(HandlerError::poison("bad").is_poison());
        assert!(HandlerError::retryable("later").into_poison().is_poison());
    }
}
