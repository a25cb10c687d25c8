//! Per-error policies: what an error type means for the delivery that failed with it, decided
//! once for the application instead of in every handler.
//!
//! A handler's `?` makes every error retryable. A policy registered for an error type (on the
//! worker builder, for all handlers or one) changes that for errors of the type, found anywhere in
//! the error's source chain: poison, retryable, retryable after a wait derived from the error
//! (a rate limit's `Retry-After`), or retried on a schedule of its own. An error the handler
//! marked poison in code stays poison.

use std::error::Error as StdError;
use std::sync::Arc;
use std::time::Duration;

use super::error::{ErrorKind, HandlerError};
use crate::retry::policy::RetryPolicy;

/// What a failure with a given error type means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorPolicy {
    /// Dead-letter it now: it can never succeed.
    Poison,
    /// Retry it on the handler's schedule (what `?` does anyway; useful to override a policy
    /// registered for all handlers in one of them).
    Retryable,
    /// Retry it, waiting at least this long first (see [`HandlerError::retry_after`]).
    RetryAfter(Duration),
    /// Retry it on this schedule and with this many attempts instead of the handler's.
    Retry(RetryPolicy),
}

type Classifier = dyn Fn(&(dyn StdError + 'static)) -> Option<ErrorPolicy> + Send + Sync;

/// The policies of one application (see the module documentation). Cheap to clone.
#[derive(Clone, Default)]
pub struct ErrorPolicies {
    rules: Vec<Arc<Rule>>,
}

struct Rule {
    /// `None`: every handler.
    handler: Option<String>,
    classify: Box<Classifier>,
}

impl std::fmt::Debug for ErrorPolicies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ErrorPolicies")
            .field("rules", &self.rules.len())
            .finish()
    }
}

/// What the policies decided for one failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decision {
    /// Poison or retryable.
    pub(crate) kind: ErrorKind,
    /// The least wait before the next attempt.
    pub(crate) retry_after: Option<Duration>,
    /// A schedule of its own, when the policy gave one.
    pub(crate) retry: Option<RetryPolicy>,
}

impl ErrorPolicies {
    /// No policies: every error is what the handler made it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a policy for errors of type `E` in every handler: `classify` sees each such error and
    /// says what it means (`None`: no change). The first policy (in the order added) that
    /// answers for a handler decides; one for a single handler
    /// ([`ErrorPolicies::for_handler`]) is asked before those for all.
    ///
    /// ```
    /// use std::time::Duration;
    /// use worker_core::{ErrorPolicies, ErrorPolicy, RetryPolicy};
    ///
    /// #[derive(Debug, thiserror::Error)]
    /// #[error("rate limited, retry after {0:?}")]
    /// struct RateLimited(Duration);
    ///
    /// #[derive(Debug, thiserror::Error)]
    /// #[error("card declined")]
    /// struct CardDeclined;
    ///
    /// let policies = ErrorPolicies::new()
    ///     .on::<RateLimited>(|e| Some(ErrorPolicy::RetryAfter(e.0)))
    ///     .on::<CardDeclined>(|_| Some(ErrorPolicy::Poison))
    ///     .for_handler::<std::io::Error>("sync-inventory", |_| {
    ///         Some(ErrorPolicy::Retry(RetryPolicy { max_attempts: 20, ..RetryPolicy::DEFAULT }))
    ///     });
    /// # let _ = policies;
    /// ```
    pub fn on<E: StdError + 'static>(
        self,
        classify: impl Fn(&E) -> Option<ErrorPolicy> + Send + Sync + 'static,
    ) -> Self {
        self.push(None, classify)
    }

    /// Adds a policy for errors of type `E` in the handler named `handler` only.
    pub fn for_handler<E: StdError + 'static>(
        self,
        handler: &str,
        classify: impl Fn(&E) -> Option<ErrorPolicy> + Send + Sync + 'static,
    ) -> Self {
        self.push(Some(handler.to_owned()), classify)
    }

    fn push<E: StdError + 'static>(
        mut self,
        handler: Option<String>,
        classify: impl Fn(&E) -> Option<ErrorPolicy> + Send + Sync + 'static,
    ) -> Self {
        self.rules.push(Arc::new(Rule {
            handler,
            classify: Box::new(move |error| error.downcast_ref::<E>().and_then(&classify)),
        }));
        self
    }

    /// Whether no policy is registered.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Up to how many attempts a delivery of a handler allowing `own` attempts can have: a
    /// policy's schedule may allow more (up to [`MOST_POLICY_ATTEMPTS`]), so with policies the
    /// retry count in the headers is read up to that.
    pub(crate) fn attempt_ceiling(&self, own: u32) -> u32 {
        if self.rules.is_empty() {
            own
        } else {
            own.max(MOST_POLICY_ATTEMPTS)
        }
    }

    /// What `error`, a failure of `handler`, means under the policies.
    pub(crate) fn decide(&self, handler: &str, error: &HandlerError) -> Decision {
        let mut decision = Decision {
            kind: error.kind(),
            retry_after: error.retry_delay(),
            retry: None,
        };
        if self.rules.is_empty() || error.is_poison() {
            return decision;
        }
        let Some(source) = error.source() else {
            return decision;
        };
        let source: &(dyn StdError + 'static) = source;
        let scoped = self
            .rules
            .iter()
            .filter(|rule| rule.handler.as_deref() == Some(handler));
        let global = self.rules.iter().filter(|rule| rule.handler.is_none());
        let decided = scoped
            .chain(global)
            .find_map(|rule| chain(source).find_map(|e| (rule.classify)(e)));
        match decided {
            None | Some(ErrorPolicy::Retryable) => {}
            Some(ErrorPolicy::Poison) => decision.kind = ErrorKind::Poison,
            Some(ErrorPolicy::RetryAfter(wait)) => decision.retry_after = Some(wait),
            Some(ErrorPolicy::Retry(policy)) => {
                decision.retry = Some(RetryPolicy {
                    max_attempts: policy.max_attempts.clamp(1, MOST_POLICY_ATTEMPTS),
                    ..policy
                })
            }
        }
        decision
    }
}

/// The most attempts a per-error schedule may allow: the retry count travels in a header and is
/// read up to this many (a forged count beyond it is clamped), whatever the handler's own limit.
pub const MOST_POLICY_ATTEMPTS: u32 = 100;

/// `error` and its sources, outermost first.
fn chain<'a>(
    error: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(error), |&e| e.source())
}

impl From<ErrorKind> for ErrorPolicy {
    fn from(kind: ErrorKind) -> Self {
        match kind {
            ErrorKind::Poison => ErrorPolicy::Poison,
            ErrorKind::Retryable => ErrorPolicy::Retryable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("rate limited for {0:?}")]
    struct RateLimited(Duration);

    #[derive(Debug, thiserror::Error)]
    #[error("card declined")]
    struct CardDeclined;

    #[derive(Debug, thiserror::Error)]
    #[error("charging failed")]
    struct ChargeFailed(#[source] CardDeclined);

    fn policies() -> ErrorPolicies {
        ErrorPolicies::new()
            .on::<RateLimited>(|e| Some(ErrorPolicy::RetryAfter(e.0)))
            .on::<CardDeclined>(|_| Some(ErrorPolicy::Poison))
            .for_handler::<CardDeclined>("lenient", |_| Some(ErrorPolicy::Retryable))
            .for_handler::<std::io::Error>("sync", |_| {
                Some(ErrorPolicy::Retry(RetryPolicy {
                    max_attempts: 1000,
                    ..RetryPolicy::DEFAULT
                }))
            })
    }

    #[test]
    fn a_policy_matches_its_type_anywhere_in_the_source_chain() {
        let p = policies();
        let d = p.decide(
            "h",
            &HandlerError::from(RateLimited(Duration::from_secs(7))),
        );
        assert_eq!(
            (d.kind, d.retry_after),
            (ErrorKind::Retryable, Some(Duration::from_secs(7)))
        );
        let d = p.decide("h", &HandlerError::from(ChargeFailed(CardDeclined)));
        assert_eq!(
            d.kind,
            ErrorKind::Poison,
            "found as the source of the handler's error"
        );
        let d = p.decide("h", &HandlerError::from(std::io::Error::other("x")));
        assert_eq!(
            d,
            Decision {
                kind: ErrorKind::Retryable,
                retry_after: None,
                retry: None
            }
        );
    }

    #[test]
    fn a_handler_policy_comes_first_and_code_marked_poison_stays_poison() {
        let p = policies();
        assert_eq!(
            p.decide("lenient", &HandlerError::from(CardDeclined)).kind,
            ErrorKind::Retryable
        );
        let marked =
            HandlerError::from_error(ErrorKind::Poison, RateLimited(Duration::from_secs(1)));
        let d = p.decide("h", &marked);
        assert_eq!((d.kind, d.retry_after), (ErrorKind::Poison, None));
        let d = p.decide("sync", &HandlerError::from(std::io::Error::other("x")));
        assert_eq!(
            d.retry.unwrap().max_attempts,
            MOST_POLICY_ATTEMPTS,
            "clamped"
        );
        assert_eq!(
            p.decide("other", &HandlerError::from(std::io::Error::other("x")))
                .retry,
            None
        );
        assert_eq!(p.attempt_ceiling(5), MOST_POLICY_ATTEMPTS);
        assert_eq!(ErrorPolicies::new().attempt_ceiling(5), 5);
    }
}
