//! The harness's queues: every waiting message with the virtual time it is due, in due order
//! (publish order among messages due at the same time), and one lane per partition key of a
//! partitioned handler, of which only the head is ever delivered.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, VecDeque};

use chrono::{DateTime, Utc};

use crate::message::inbound::InboundMessage;

/// A partition lane: a partitioned handler (by index) and an entity's key.
pub(crate) type Lane = (usize, String);

/// A message waiting for its handler.
#[derive(Debug)]
pub(crate) struct Waiting {
    /// The handler's index in the harness.
    pub(crate) handler: usize,
    /// The delivery as the handler's queue would hand it over.
    pub(crate) message: InboundMessage,
    /// When it may be delivered.
    pub(crate) due: DateTime<Utc>,
}

/// What the heap orders: a message of an ordinary queue, or the head of a lane.
#[derive(Debug)]
enum Slot {
    Queue(Box<Waiting>),
    Lane(Lane),
}

#[derive(Debug)]
struct Entry {
    due: DateTime<Utc>,
    seq: u64,
    slot: Slot,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    /// Reversed, so that the max-heap yields the earliest due (then the first published).
    fn cmp(&self, other: &Self) -> Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

/// Every message waiting in the harness.
#[derive(Debug, Default)]
pub(crate) struct Schedule {
    heap: BinaryHeap<Entry>,
    lanes: HashMap<Lane, VecDeque<Waiting>>,
    seq: u64,
    waiting: usize,
}

impl Schedule {
    /// Queues `waiting`, at the tail of `lane` when it belongs to one.
    pub(crate) fn push(&mut self, waiting: Waiting, lane: Option<Lane>) {
        self.waiting += 1;
        match lane {
            None => self.enqueue(waiting.due, Slot::Queue(Box::new(waiting))),
            Some(lane) => {
                let queue = self.lanes.entry(lane.clone()).or_default();
                let due = waiting.due;
                queue.push_back(waiting);
                if queue.len() == 1 {
                    self.enqueue(due, Slot::Lane(lane));
                }
            }
        }
    }

    /// When the next delivery is due, if anything waits.
    pub(crate) fn next_due(&self) -> Option<DateTime<Utc>> {
        self.heap.peek().map(|entry| entry.due)
    }

    /// How many messages wait (retries and given-back deliveries included).
    pub(crate) fn len(&self) -> usize {
        self.waiting
    }

    /// Takes the next due message, with its lane (its `due` is when it became deliverable). A lane's head stays taken until
    /// [`finish`](Self::finish) or [`hold`](Self::hold) says what became of it, so nothing behind
    /// it is delivered in the meantime.
    pub(crate) fn take(&mut self) -> Option<(Waiting, Option<Lane>)> {
        let entry = self.heap.pop()?;
        self.waiting -= 1;
        Some(match entry.slot {
            Slot::Queue(waiting) => (*waiting, None),
            Slot::Lane(lane) => {
                let mut head = self
                    .lanes
                    .get_mut(&lane)
                    .and_then(VecDeque::pop_front)
                    .expect("a lane in the heap has a head");
                // Due when its lane let it go: not before the head ahead of it was settled.
                head.due = entry.due;
                (head, Some(lane))
            }
        })
    }

    /// The taken head of `lane` is settled: the next message of the lane becomes due (not
    /// before `now`).
    pub(crate) fn finish(&mut self, lane: Lane, now: DateTime<Utc>) {
        let next_due = match self.lanes.get(&lane).and_then(VecDeque::front) {
            Some(next) => next.due.max(now),
            None => {
                self.lanes.remove(&lane);
                return;
            }
        };
        self.enqueue(next_due, Slot::Lane(lane));
    }

    /// The taken head of `lane` is tried again at `waiting.due`, still ahead of the rest of its
    /// lane (a partitioned handler retries in place).
    pub(crate) fn hold(&mut self, lane: Lane, waiting: Waiting) {
        self.waiting += 1;
        let due = waiting.due;
        self.lanes
            .entry(lane.clone())
            .or_default()
            .push_front(waiting);
        self.enqueue(due, Slot::Lane(lane));
    }

    fn enqueue(&mut self, due: DateTime<Utc>, slot: Slot) {
        self.seq += 1;
        self.heap.push(Entry {
            due,
            seq: self.seq,
            slot,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(id: &str, due: DateTime<Utc>) -> Waiting {
        let mut message = InboundMessage::default();
        message.properties.message_id = Some(id.into());
        Waiting {
            handler: 0,
            message,
            due,
        }
    }

    fn id(taken: &(Waiting, Option<Lane>)) -> &str {
        taken.0.message.properties.message_id.as_deref().unwrap()
    }

    #[test]
    fn due_order_then_publish_order_and_a_held_lane_head_blocks_its_lane_only() {
        let t0 = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let later = t0 + chrono::Duration::seconds(5);
        let lane: Lane = (0, "order-1".into());
        let mut schedule = Schedule::default();
        schedule.push(waiting("late", later), None);
        schedule.push(waiting("a1", t0), Some(lane.clone()));
        schedule.push(waiting("a2", t0), Some(lane.clone()));
        schedule.push(waiting("b", t0), None);
        assert_eq!(schedule.len(), 4);

        let a1 = schedule.take().unwrap();
        assert_eq!(id(&a1), "a1");
        // a1 fails and retries in place in 2 s: a2 must wait behind it, b and "late" need not.
        let retry = Waiting {
            due: t0 + chrono::Duration::seconds(2),
            ..a1.0
        };
        schedule.hold(lane.clone(), retry);
        assert_eq!(id(&schedule.take().unwrap()), "b");
        let again = schedule.take().unwrap();
        assert_eq!(id(&again), "a1");
        schedule.finish(lane.clone(), again.0.due);
        let a2 = schedule.take().unwrap();
        assert_eq!(
            (id(&a2), a2.0.due),
            ("a2", t0 + chrono::Duration::seconds(2))
        );
        schedule.finish(lane, a2.0.due);
        assert_eq!(schedule.next_due(), Some(later));
        assert_eq!(id(&schedule.take().unwrap()), "late");
        assert!(schedule.take().is_none());
        assert_eq!(schedule.len(), 0);
        assert!(schedule.lanes.is_empty());
    }
}
