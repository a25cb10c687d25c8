//! The ack ledger of a channel consumed in batches: which delivery tags are unsettled, which are
//! durable and wait for their ack, and when one `multiple` ack may settle many of them.
//!
//! A `multiple` ack with tag `T` settles every unacked delivery up to `T` on the channel, so it
//! may go out only when every delivery up to `T` is durable (committed, or its retry copy or dead
//! letter confirmed). Batches finish out of order; a batch whose deliveries sit above one still
//! being processed elsewhere waits (at most [`ACK_WAIT`]) until that one settles, and the one
//! `multiple` ack that follows covers both. Past [`ACK_WAIT`] it acks its deliveries one by one,
//! so a slow batch never holds the others' acks for long. All acks and nacks go out under the
//! ledger's lock, in order: a single ack can never follow the `multiple` ack that covered it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use tokio::sync::{oneshot, Mutex};

use crate::ack::{self, Acker};

/// How long durable deliveries wait for older deliveries of the channel to settle, so that one
/// `multiple` ack covers them all, before they are acked one by one.
pub(crate) const ACK_WAIT: Duration = Duration::from_millis(100);

/// Delivery tags and their state, without I/O. `P` travels with each durable tag (its acker and
/// batch in the ledger).
#[derive(Debug)]
struct Book<P> {
    /// Delivered and neither durable nor given back.
    unsettled: BTreeSet<u64>,
    /// Durable, not acked yet.
    durable: BTreeMap<u64, P>,
}

impl<P> Default for Book<P> {
    fn default() -> Self {
        Self {
            unsettled: BTreeSet::new(),
            durable: BTreeMap::new(),
        }
    }
}

impl<P> Book<P> {
    fn track(&mut self, tag: u64) {
        self.unsettled.insert(tag);
    }

    /// `tag`'s outcome is durable: it waits for its ack.
    fn durable(&mut self, tag: u64, payload: P) {
        self.unsettled.remove(&tag);
        self.durable.insert(tag, payload);
    }

    /// `tag` is given back (nacked): it no longer holds the others up.
    fn given_back(&mut self, tag: u64) {
        self.unsettled.remove(&tag);
    }

    /// The durable tags that one `multiple` ack may settle now (every tag below the oldest
    /// unsettled one), taken out of the book, in ascending order; the ack carries the last.
    fn take_coverable(&mut self) -> Vec<(u64, P)> {
        let Some(&oldest_unsettled) = self.unsettled.first() else {
            return std::mem::take(&mut self.durable).into_iter().collect();
        };
        let above = self.durable.split_off(&oldest_unsettled);
        std::mem::replace(&mut self.durable, above)
            .into_iter()
            .collect()
    }

    /// Takes the durable tags whose payload matches `which` (to ack them one by one).
    fn take_where(&mut self, which: impl Fn(&P) -> bool) -> Vec<(u64, P)> {
        let tags: Vec<u64> = self
            .durable
            .iter()
            .filter(|(_, payload)| which(payload))
            .map(|(&tag, _)| tag)
            .collect();
        tags.into_iter()
            .filter_map(|tag| self.durable.remove(&tag).map(|payload| (tag, payload)))
            .collect()
    }
}

/// A durable delivery waiting for its ack.
#[derive(Debug)]
struct Waiting {
    acker: Acker,
    batch: u64,
}

/// What a batch learns about its acks.
#[derive(Debug)]
struct Waiter {
    /// Whether each tag's ack went out.
    acked: HashMap<u64, bool>,
    /// Tags not acked yet.
    remaining: usize,
    /// Told when `remaining` reaches zero.
    done: Option<oneshot::Sender<()>>,
}

#[derive(Debug, Default)]
struct State {
    book: Book<Waiting>,
    waiters: HashMap<u64, Waiter>,
    next_batch: u64,
}

impl State {
    fn resolve(&mut self, batch: u64, tag: u64, ok: bool) {
        if let Some(waiter) = self.waiters.get_mut(&batch) {
            waiter.acked.insert(tag, ok);
            waiter.remaining = waiter.remaining.saturating_sub(1);
            if waiter.remaining == 0 {
                if let Some(done) = waiter.done.take() {
                    let _ = done.send(());
                }
            }
        }
    }

    /// Sends the `multiple` ack that the book allows now, if any.
    async fn flush(&mut self) {
        let covered = self.book.take_coverable();
        let Some((_, last)) = covered.last() else {
            return;
        };
        let multiple = covered.len() > 1;
        let ok = ack::ack(&last.acker, multiple).await;
        for (tag, waiting) in covered {
            self.resolve(waiting.batch, tag, ok);
        }
    }
}

/// The ack ledger of one channel (see the module documentation).
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    state: Mutex<State>,
}

impl Ledger {
    /// A delivery arrived; it holds up `multiple` acks above it until it is settled.
    pub(crate) async fn track(&self, tag: u64) {
        self.state.lock().await.book.track(tag);
    }

    /// Acks durable `deliveries`: together with older ones in one `multiple` ack as
    /// soon as every older delivery is settled, or one by one after [`ACK_WAIT`]. Returns for
    /// each, in the order given, whether its ack went out.
    pub(crate) async fn ack(&self, deliveries: &[&Acker]) -> Vec<bool> {
        if deliveries.is_empty() {
            return Vec::new();
        }
        let (done, batch) = {
            let mut state = self.state.lock().await;
            let batch = state.next_batch;
            state.next_batch += 1;
            let (tell, done) = oneshot::channel();
            state.waiters.insert(
                batch,
                Waiter {
                    acked: HashMap::with_capacity(deliveries.len()),
                    remaining: deliveries.len(),
                    done: Some(tell),
                },
            );
            for &acker in deliveries {
                let acker = acker.clone();
                state.book.durable(acker.tag(), Waiting { acker, batch });
            }
            state.flush().await;
            (done, batch)
        };
        let on_time = tokio::time::timeout(ACK_WAIT, done).await.is_ok();
        let mut state = self.state.lock().await;
        if !on_time {
            // Older deliveries are still being processed: do not hold these acks any longer.
            for (tag, waiting) in state.book.take_where(|w| w.batch == batch) {
                let ok = ack::ack(&waiting.acker, false).await;
                state.resolve(batch, tag, ok);
            }
        }
        let acked = state
            .waiters
            .remove(&batch)
            .map(|waiter| waiter.acked)
            .unwrap_or_default();
        deliveries
            .iter()
            .map(|acker| acked.get(&acker.tag()).copied().unwrap_or(false))
            .collect()
    }

    /// Gives one delivery back (nack with requeue); acks waiting only for it go out.
    pub(crate) async fn nack(&self, acker: &Acker) {
        let mut state = self.state.lock().await;
        state.book.given_back(acker.tag());
        ack::nack(acker).await;
        state.flush().await;
    }
}

#[cfg(test)]
mod tests {
    use super::Book;

    fn tags<P>(taken: &[(u64, P)]) -> Vec<u64> {
        taken.iter().map(|(tag, _)| *tag).collect()
    }

    #[test]
    fn a_batch_with_nothing_older_unsettled_is_covered_at_once() {
        let mut book = Book::default();
        (1..=6).for_each(|tag| book.track(tag));
        for tag in 1..=3 {
            book.durable(tag, 'a');
        }
        assert_eq!(tags(&book.take_coverable()), [1, 2, 3]);
        assert!(book.take_coverable().is_empty(), "taken once");
    }

    #[test]
    fn a_younger_batch_waits_for_the_older_one_and_one_ack_covers_both() {
        let mut book = Book::default();
        (1..=6).for_each(|tag| book.track(tag));
        for tag in 4..=6 {
            book.durable(tag, 'b');
        }
        assert!(
            book.take_coverable().is_empty(),
            "1..=3 are still unsettled: no ack may cover 4..=6"
        );
        for tag in 1..=3 {
            book.durable(tag, 'a');
        }
        let covered = book.take_coverable();
        assert_eq!(tags(&covered), [1, 2, 3, 4, 5, 6]);
        assert_eq!(covered.last().map(|(_, p)| *p), Some('b'));
    }

    #[test]
    fn coverage_stops_below_the_oldest_unsettled_tag() {
        let mut book = Book::default();
        (1..=9).for_each(|tag| book.track(tag));
        for tag in [1, 2, 4, 5, 8] {
            book.durable(tag, 'x');
        }
        assert_eq!(tags(&book.take_coverable()), [1, 2], "3 is unsettled");
        book.given_back(3);
        assert_eq!(tags(&book.take_coverable()), [4, 5], "6 is unsettled");
        assert_eq!(tags(&book.take_where(|p| *p == 'x')), [8]);
        assert!(book.take_coverable().is_empty());
    }

    #[test]
    fn a_given_back_delivery_is_never_covered() {
        let mut book = Book::default();
        (1..=3).for_each(|tag| book.track(tag));
        book.given_back(2);
        book.durable(1, 'a');
        book.durable(3, 'a');
        // 2 was nacked: a multiple ack with tag 3 acks 1 and 3 only (2 is no longer outstanding).
        assert_eq!(tags(&book.take_coverable()), [1, 3]);
    }

    #[test]
    fn take_where_takes_only_that_batch() {
        let mut book = Book::default();
        (1..=5).for_each(|tag| book.track(tag));
        book.durable(2, 'a');
        book.durable(3, 'b');
        book.durable(4, 'a');
        assert_eq!(tags(&book.take_where(|p| *p == 'a')), [2, 4]);
        book.durable(1, 'c');
        assert_eq!(tags(&book.take_coverable()), [1, 3]);
    }

    /// Against the real broker: batches settled out of order are acked (the deferred ones by the
    /// older batch's `multiple` ack), a batch held up past `ACK_WAIT` is acked one by one, and the
    /// channel never sees an ack for a tag that is already settled (it would close the channel).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn out_of_order_batches_are_all_acked_once_on_a_real_channel() {
        use std::sync::Arc;
        use std::time::{Duration, Instant};

        use futures::StreamExt;
        use lapin::options::{
            BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
            QueueDeclareOptions, QueueDeleteOptions,
        };
        use lapin::types::{AMQPValue, FieldTable};
        use lapin::{BasicProperties, Connection, ConnectionProperties};

        use super::{Acker, Ledger, ACK_WAIT};

        let url = std::env::var("AMQP_URL")
            .unwrap_or_else(|_| crate::settings::DEFAULT_AMQP_URL.to_owned());
        let properties = ConnectionProperties::default();
        let connection = Connection::connect(&url, properties).await.expect("broker");
        let channel = Arc::new(connection.create_channel().await.expect("channel"));
        let queue = format!("ledger-test-{}", rand::random::<u64>());
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                arguments,
            )
            .await
            .expect("declare");
        for i in 0..40u32 {
            channel
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &i.to_be_bytes(),
                    BasicProperties::default(),
                )
                .await
                .expect("publish");
        }
        channel
            .basic_qos(40, BasicQosOptions::default())
            .await
            .expect("qos");
        let mut consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "ledger-test".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let ledger = Arc::new(Ledger::default());
        let mut deliveries = Vec::new();
        while deliveries.len() < 40 {
            let delivery = tokio::time::timeout(Duration::from_secs(30), consumer.next())
                .await
                .expect("deliveries arrive")
                .expect("stream open")
                .expect("delivery");
            ledger.track(delivery.delivery_tag).await;
            deliveries.push(Acker::new(Arc::clone(&channel), delivery.delivery_tag));
        }
        // No more deliveries: the one given back below must stay in the queue.
        channel
            .basic_cancel("ledger-test".into(), BasicCancelOptions::default())
            .await
            .expect("cancel");
        let batch = |range: std::ops::Range<usize>| deliveries[range].to_vec();
        let (first, second, third) = (batch(0..10), batch(10..20), batch(20..30));
        let (held_back, late) = (deliveries[30].clone(), batch(31..40));

        // The youngest batch first: it must wait for 1..=20 and be covered by their ack.
        let acking = |batch: Vec<Acker>| {
            let ledger = Arc::clone(&ledger);
            tokio::spawn(async move {
                let refs: Vec<&Acker> = batch.iter().collect();
                let started = Instant::now();
                let acked = ledger.ack(&refs).await;
                (acked, started.elapsed())
            })
        };
        let third = acking(third);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let first = acking(first);
        let second = acking(second);
        for (name, task) in [("first", first), ("second", second), ("third", third)] {
            let (acked, waited) = task.await.expect("ack task");
            assert!(acked.iter().all(|&ok| ok), "{name} batch acked: {acked:?}");
            assert!(
                waited < ACK_WAIT,
                "{name} batch covered by a multiple ack, not by the timeout ({waited:?})"
            );
        }
        // Delivery 31 is still unsettled: the batch above it waits ACK_WAIT, then acks one by one.
        let (acked, waited) = acking(late).await.expect("ack task");
        assert!(
            acked.iter().all(|&ok| ok),
            "late batch acked one by one: {acked:?}"
        );
        assert!(
            waited >= ACK_WAIT,
            "the late batch waited for delivery 31 first ({waited:?})"
        );
        ledger.nack(&held_back).await;

        // An ack of a tag already settled would have closed the channel (PRECONDITION_FAILED).
        channel
            .basic_qos(40, BasicQosOptions::default())
            .await
            .expect("channel still open");
        assert!(channel.status().connected(), "channel still open");
        // Let the quorum queue apply the acks before the channel closes (rabbitmq-server#10327).
        tokio::time::sleep(Duration::from_millis(500)).await;
        channel.close(200, "done".into()).await.expect("close");
        let check = connection.create_channel().await.expect("channel");
        let mut left = u32::MAX;
        for _ in 0..50 {
            left = check
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .expect("passive declare")
                .message_count();
            if left == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        check
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .expect("delete");
        assert_eq!(left, 1, "only the delivery given back is left in the queue");
        let _ = connection.close(200, "done".into()).await;
    }
}
