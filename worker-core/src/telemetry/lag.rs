//! Lag in seconds: per handler, how old the oldest delivery it has taken and not settled is.
//!
//! Queue depth alone misses a stalled consumer: when every slot hangs in a handler, nothing is
//! delivered and the depth stays flat while the events wait longer and longer. The transport
//! registers each delivery it takes ([`Unsettled::taken`]) and drops the guard once the delivery
//! is settled; `worker_lag_seconds` is now minus the oldest registered time, read at each scrape.
//! Because a queue hands out its oldest messages first, the oldest delivery a consumer holds is the
//! oldest message waiting for the handler, as long as a consumer is attached (a worker that is
//! down exports nothing at all, which `up == 0` catches).
//!
//! A delivery's time is its `timestamp` property (when the producer sent it; seconds) for a first
//! attempt, and the time it was taken for a retry copy (which waited in a delay queue on purpose)
//! or a message without a timestamp.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::message::inbound::InboundMessage;
use crate::retry::attempts::is_retry_copy;

/// The deliveries of one handler taken and not yet settled, by the time they entered the queue.
#[derive(Debug)]
pub struct Unsettled {
    handler: &'static str,
    /// Milliseconds since the epoch → how many deliveries with that time.
    since: Mutex<BTreeMap<i64, u32>>,
}

/// One taken delivery; dropping it (once the delivery is settled) forgets it.
#[derive(Debug)]
#[must_use = "the delivery counts as unsettled only while this guard lives"]
pub struct Taken {
    unsettled: Arc<Unsettled>,
    since: i64,
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Unsettled {
    /// Nothing taken yet, for `handler`.
    pub fn new(handler: &'static str) -> Arc<Self> {
        Arc::new(Self {
            handler,
            since: Mutex::new(BTreeMap::new()),
        })
    }

    /// The handler it tracks.
    pub fn handler(&self) -> &'static str {
        self.handler
    }

    /// Registers a delivery just taken from the queue.
    pub fn taken(self: &Arc<Self>, message: &InboundMessage) -> Taken {
        let now = now_millis();
        let since = match message.properties.timestamp {
            Some(sent) if !is_retry_copy(&message.properties.headers) => {
                i64::try_from(sent).map_or(now, |s| s.saturating_mul(1000).min(now))
            }
            _ => now,
        };
        *self
            .since
            .lock()
            .expect("lag lock")
            .entry(since)
            .or_default() += 1;
        Taken {
            unsettled: Arc::clone(self),
            since,
        }
    }

    /// Seconds since the oldest unsettled delivery entered its queue; 0 when there is none.
    pub fn oldest_age_seconds(&self) -> f64 {
        let since = self.since.lock().expect("lag lock");
        match since.keys().next() {
            Some(&oldest) => (now_millis() - oldest).max(0) as f64 / 1000.0,
            None => 0.0,
        }
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        let mut since = self.unsettled.since.lock().expect("lag lock");
        if let Some(count) = since.get_mut(&self.since) {
            *count -= 1;
            if *count == 0 {
                since.remove(&self.since);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::headers::HeaderValue;

    fn sent_secs_ago(secs: u64) -> InboundMessage {
        let mut m = InboundMessage::default();
        m.properties.timestamp = Some((now_millis() / 1000) as u64 - secs);
        m
    }

    #[test]
    fn the_oldest_unsettled_delivery_counts_until_it_is_settled() {
        let u = Unsettled::new("h");
        assert_eq!(u.oldest_age_seconds(), 0.0);
        let old = u.taken(&sent_secs_ago(30));
        let young = u.taken(&sent_secs_ago(2));
        let twin = u.taken(&sent_secs_ago(30));
        assert!((29.0..32.0).contains(&u.oldest_age_seconds()));
        drop(old);
        assert!(
            (29.0..32.0).contains(&u.oldest_age_seconds()),
            "its twin remains"
        );
        drop(twin);
        assert!((1.0..4.0).contains(&u.oldest_age_seconds()));
        drop(young);
        assert_eq!(u.oldest_age_seconds(), 0.0);
    }

    #[test]
    fn a_retry_copy_or_a_message_without_a_timestamp_counts_from_when_it_was_taken() {
        let u = Unsettled::new("h");
        let mut copy = sent_secs_ago(600);
        copy.properties
            .headers
            .insert("x-worker-attempts".into(), HeaderValue::I64(2));
        let _copy = u.taken(&copy);
        let _plain = u.taken(&InboundMessage::default());
        assert!(u.oldest_age_seconds() < 1.0);
        let future = {
            let mut m = InboundMessage::default();
            m.properties.timestamp = Some(u64::MAX);
            m
        };
        let _skewed = u.taken(&future);
        assert!(
            u.oldest_age_seconds() < 1.0,
            "a producer clock ahead is not negative lag"
        );
    }
}
