//! How the relay runs: batch size, poll interval, retention, backoff.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `WORKER_OUTBOX` | off | `true`: the worker runs a relay (as `WorkerBuilder::outbox()` does); `false`: it does not, even when the code asks |
//! | `WORKER_OUTBOX_BATCH_SIZE` | `100` | rows locked and published per transaction |
//! | `WORKER_OUTBOX_POLL_INTERVAL` | `1s` | how often the table is polled when no notification arrives |
//! | `WORKER_OUTBOX_RETENTION` | `7d` | published rows older than this are deleted (hourly) |
//! | `WORKER_OUTBOX_RETRY_BASE`, `WORKER_OUTBOX_RETRY_CAP` | `1s`, `1m` | backoff of a row whose publish failed: `min(base·2^(n-1), cap)` |

use std::time::Duration;

use crate::config::{parse_bool, parse_duration, ConfigError, Variables};

/// The relay's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxSettings {
    /// Rows locked and published per transaction.
    pub batch_size: u32,
    /// Poll interval when no notification arrives (the fallback for a lost `NOTIFY`).
    pub poll_interval: Duration,
    /// Published rows older than this are deleted.
    pub retention: Duration,
    /// How often the retention cleanup runs.
    pub cleanup_interval: Duration,
    /// Backoff after the first failed publish of a row.
    pub retry_base: Duration,
    /// Longest backoff of a row.
    pub retry_cap: Duration,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        Self {
            batch_size: 100,
            poll_interval: Duration::from_secs(1),
            retention: Duration::from_secs(7 * 86_400),
            cleanup_interval: Duration::from_secs(3600),
            retry_base: Duration::from_secs(1),
            retry_cap: Duration::from_secs(60),
        }
    }
}

impl OutboxSettings {
    /// The settings from `WORKER_OUTBOX_*` variables of the environment; unset ones keep their
    /// defaults.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(&Variables::from_env())
    }

    /// The settings from `WORKER_OUTBOX_*` variables in `vars`; unset ones keep their defaults.
    pub fn from_vars(vars: &Variables) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let duration = |var: &str, default: Duration| -> Result<Duration, ConfigError> {
            Ok(vars.parse(var, parse_duration)?.unwrap_or(default))
        };
        let batch_size = vars
            .parse("WORKER_OUTBOX_BATCH_SIZE", |value| {
                match value.parse::<u32>() {
                    Ok(n) if (1..=10_000).contains(&n) => Ok(n),
                    _ => Err("expected a whole number from 1 to 10000".into()),
                }
            })?
            .unwrap_or(defaults.batch_size);
        let settings = Self {
            batch_size,
            poll_interval: duration("WORKER_OUTBOX_POLL_INTERVAL", defaults.poll_interval)?,
            retention: duration("WORKER_OUTBOX_RETENTION", defaults.retention)?,
            cleanup_interval: defaults.cleanup_interval,
            retry_base: duration("WORKER_OUTBOX_RETRY_BASE", defaults.retry_base)?,
            retry_cap: duration("WORKER_OUTBOX_RETRY_CAP", defaults.retry_cap)?,
        };
        if settings.poll_interval.is_zero() || settings.retry_base.is_zero() {
            return Err(ConfigError::Invalid {
                var: "WORKER_OUTBOX_POLL_INTERVAL / WORKER_OUTBOX_RETRY_BASE".into(),
                value: format!("{:?} / {:?}", settings.poll_interval, settings.retry_base),
                reason: "must be positive".into(),
            });
        }
        Ok(settings)
    }

    /// `WORKER_OUTBOX` in `vars`: `Some(true)` or `Some(false)` when set, `None` when not.
    pub fn switch_from_vars(vars: &Variables) -> Result<Option<bool>, ConfigError> {
        vars.parse("WORKER_OUTBOX", parse_bool)
    }

    /// The pause before the next publish of a row that failed `failures` times.
    pub fn backoff(&self, failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(20));
        self.retry_base.saturating_mul(factor).min(self.retry_cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = OutboxSettings::default();
        assert_eq!(s.backoff(1), Duration::from_secs(1));
        assert_eq!(s.backoff(3), Duration::from_secs(4));
        assert_eq!(s.backoff(40), Duration::from_secs(60));
    }
}
