//! How a retry waits on the broker (`docs/contracts.md` §4): which delay queue a retry copy goes to, how
//! many delay queues a retry policy needs, and the per-message TTL that holds the copy back.
//!
//! Level `k` serves the k-th failure until the exponential part of the delay reaches the cap;
//! later failures share the last level. Every copy in one level therefore has a TTL in
//! `[base_delay(level), base_delay(level) + jitter]`: per-message TTL only expires at the head of a
//! queue, so a FIFO delay queue per level holds a copy back by at most the jitter. When its TTL
//! runs out, RabbitMQ dead-letters the copy back to the handler's work queue.

use std::time::Duration;

use worker_core::RetryPolicy;

use worker_core::transport::message::Properties;

use worker_core::transport::pipeline::OutboundMessage;

/// How many delay levels `policy` can use: the failures until the cap is reached, and never more
/// than `max_attempts - 1` (the last attempt is never followed by a retry).
///
/// ```
/// use worker_core::RetryPolicy;
///
/// let policy = RetryPolicy { max_attempts: 12, ..RetryPolicy::DEFAULT };
/// assert_eq!(worker_rabbitmq::delay::level_count(&policy), 9); // 200 ms .. 25.6 s, then 30 s
/// ```
pub fn level_count(policy: &RetryPolicy) -> u32 {
    let retries = policy.max_attempts.saturating_sub(1).max(1);
    let mut level = 1;
    while level < retries && policy.base_delay(level) < policy.cap {
        level += 1;
    }
    level
}

/// The delay level (1-based) of the copy published after the `failures`-th failure.
pub fn level(policy: &RetryPolicy, failures: u32) -> u32 {
    failures.clamp(1, level_count(policy))
}

/// Where a copy that must wait `delay` after its `failures`-th failure goes: the delay level and
/// the TTL it gets there.
///
/// A backoff delay fits its failure's level (`[base_delay(level), base_delay(level) + jitter]`)
/// and is used as it is. Any other wait (the handler asked for one with `retry_after`, or a
/// deferred copy still has that long to wait) goes to the longest level whose base delay does not
/// exceed it (level 1 for a wait shorter than every level), with a TTL inside that level's
/// window, so the head-of-line rule still holds; what
/// is left of the wait is served when the copy comes back early (the core parks it again, see
/// `x-worker-not-before` in `docs/contracts.md` §4).
///
/// ```
/// use std::time::Duration;
/// use worker_core::RetryPolicy;
/// use worker_rabbitmq::delay::placement;
///
/// let policy = RetryPolicy { max_attempts: 5, ..RetryPolicy::DEFAULT }; // levels 200 ms .. 1.6 s
/// assert_eq!(placement(&policy, 1, Duration::from_millis(700)), (1, Duration::from_millis(700)));
/// // Asked to wait 30 s: the longest level (1.6 s, TTL up to 2.6 s), then parked again on arrival.
/// assert_eq!(placement(&policy, 1, Duration::from_secs(30)), (4, Duration::from_millis(2600)));
/// ```
pub fn placement(policy: &RetryPolicy, failures: u32, delay: Duration) -> (u32, Duration) {
    let own = level(policy, failures);
    let floor = policy.base_delay(own);
    if delay >= floor && delay <= floor + policy.jitter {
        return (own, delay);
    }
    let longest = (1..=level_count(policy))
        .rev()
        .find(|&k| policy.base_delay(k) <= delay)
        .unwrap_or(1);
    let floor = policy.base_delay(longest);
    (longest, delay.clamp(floor, floor + policy.jitter))
}

/// The per-message TTL (`expiration`, milliseconds as text) that holds a copy back for `delay`,
/// never below 1 ms (a zero delay, e.g. with every backoff setting at 0, still expires through
/// the delay queue rather than relying on RabbitMQ's special case for TTL 0).
pub fn expiration(delay: Duration) -> String {
    delay.as_millis().max(1).to_string()
}

/// The message to publish to the delay queue: the retry copy with its delay as the TTL.
///
/// A copy of the core's message, because the disposition is only borrowed while it is settled;
/// this is on the retry path only, where a confirmed publish costs far more.
pub(crate) fn with_ttl(message: &OutboundMessage, delay: Duration) -> OutboundMessage {
    OutboundMessage {
        body: message.body.clone(),
        properties: Properties {
            expiration: Some(expiration(delay)),
            ..message.properties.clone()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_stop_at_the_cap_and_at_the_last_retry() {
        let p = RetryPolicy {
            max_attempts: 12,
            ..RetryPolicy::DEFAULT
        };
        assert_eq!(level_count(&p), 9); // 200ms .. 25.6s, then 30s
        assert_eq!(level(&p, 1), 1);
        assert_eq!(level(&p, 9), 9);
        assert_eq!(level(&p, 11), 9);
        let p = RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::DEFAULT
        };
        assert_eq!(level_count(&p), 2);
        let p = RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::DEFAULT
        };
        assert_eq!(level_count(&p), 1);
    }

    /// The head-of-line rule: every delay the policy draws for a failure lies within the jitter
    /// of its level's base delay, so no copy waits behind one that is due much later.
    #[test]
    fn every_copy_in_a_level_is_due_within_the_jitter() {
        for max_attempts in [2, 5, 12, 40] {
            let p = RetryPolicy {
                max_attempts,
                ..RetryPolicy::DEFAULT
            };
            for failures in 1..max_attempts {
                let floor = p.base_delay(level(&p, failures));
                for _ in 0..20 {
                    let delay = p.delay(failures);
                    assert!(
                        delay >= floor && delay <= floor + p.jitter,
                        "failure {failures} of {max_attempts}: {delay:?} outside level {} ({floor:?} + jitter)",
                        level(&p, failures)
                    );
                }
            }
        }
    }

    /// A wait longer than its failure's level goes to a level whose window holds its TTL, so
    /// the head-of-line rule holds for retry-after copies too, and the TTL never exceeds the wait.
    #[test]
    fn long_waits_keep_every_level_within_its_window() {
        let p = RetryPolicy {
            max_attempts: 5,
            ..RetryPolicy::DEFAULT
        };
        for failures in 1..5 {
            for ms in [1u64, 150, 700, 1_700, 3_000, 30_000, 900_000] {
                let wait = Duration::from_millis(ms);
                let (level, ttl) = placement(&p, failures, wait);
                let floor = p.base_delay(level);
                assert!(
                    ttl >= floor && ttl <= floor + p.jitter,
                    "{wait:?} after failure {failures}: TTL {ttl:?} outside level {level}"
                );
                assert!(
                    ttl <= wait.max(floor),
                    "{wait:?}: TTL {ttl:?} longer than asked"
                );
            }
        }
    }

    #[test]
    fn the_ttl_is_the_delay_in_milliseconds_and_never_zero() {
        assert_eq!(expiration(Duration::from_millis(1234)), "1234");
        assert_eq!(expiration(Duration::from_micros(300)), "1");
        assert_eq!(expiration(Duration::ZERO), "1");
        let mut message = OutboundMessage {
            body: b"{}".to_vec(),
            properties: Properties::default(),
        };
        message.properties.message_id = Some("e1".into());
        message.properties.expiration = Some("60000".into());
        let copy = with_ttl(&message, Duration::from_millis(200));
        assert_eq!(copy.properties.expiration.as_deref(), Some("200"));
        assert_eq!(copy.properties.message_id.as_deref(), Some("e1"));
        assert_eq!(copy.body, message.body);
    }
}
