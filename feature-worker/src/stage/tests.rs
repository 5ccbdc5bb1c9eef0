//! The runner on a scripted input (no broker): offsets are stored only after their outputs
//! are acknowledged and only in partition order, a record received after its partition was
//! revoked is dropped (revocations served inside `recv()` are handled first), reading pauses
//! at `max_in_flight`, and the drain at shutdown waits for what is in flight.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::Timestamp;
use rdkafka::error::KafkaError;
use rdkafka::message::OwnedMessage;
use riskstream_common::shutdown::CancellationToken;
use tokio::sync::{mpsc, oneshot};

use super::{Input, Limits, Outputs, Record, Stage, run};

/// What the scripted broker does next, in order.
enum Step {
    Assign(i32),
    /// Served inside the next `recv()`, like librdkafka's rebalance callbacks.
    Revoke(i32),
    Record(i32, i64),
}

/// Everything the test looks at, shared with the input and the stage.
#[derive(Default)]
struct Seen {
    assigned: HashSet<i32>,
    revoked: Vec<i32>,
    /// `store_offsets` calls: (partition, next offset).
    stored: Vec<(i32, i64)>,
    /// Offsets stored with a checkpoint: (partition, next offset, checkpoint).
    checkpoints: Vec<(i32, i64, String)>,
    /// Records the stage was handed, in order.
    handled: Vec<(i32, i64)>,
    /// Revocations the stage was told of.
    stage_revoked: Vec<i32>,
    /// The acknowledgement of each handled record's output, for the test to send.
    acks: Vec<((i32, i64), oneshot::Sender<()>)>,
    closed: bool,
}

type Shared = Arc<Mutex<Seen>>;

struct Scripted {
    steps: tokio::sync::Mutex<mpsc::UnboundedReceiver<Step>>,
    seen: Shared,
}

impl Input for Scripted {
    type Message<'a> = OwnedMessage;

    async fn recv(&self) -> Result<OwnedMessage, KafkaError> {
        let mut steps = self.steps.lock().await;
        loop {
            let Some(step) = steps.recv().await else {
                return std::future::pending().await;
            };
            let mut seen = self.seen.lock().unwrap();
            match step {
                Step::Assign(p) => {
                    seen.assigned.insert(p);
                }
                Step::Revoke(p) => {
                    seen.assigned.remove(&p);
                    seen.revoked.push(p);
                }
                Step::Record(p, o) => {
                    return Ok(OwnedMessage::new(
                        Some(b"{}".to_vec()),
                        None,
                        "in".into(),
                        Timestamp::NotAvailable,
                        p,
                        o,
                        None,
                    ));
                }
            }
        }
    }

    fn record<'m>(m: &'m OwnedMessage) -> Record<'m> {
        Record::from_owned(m)
    }

    fn take_revoked(&self) -> Vec<i32> {
        std::mem::take(&mut self.seen.lock().unwrap().revoked)
    }

    fn is_assigned(&self, partition: i32) -> bool {
        self.seen.lock().unwrap().assigned.contains(&partition)
    }

    fn store_offsets(&self, next: &[(i32, i64)], checkpoints: &HashMap<i32, String>) {
        let mut seen = self.seen.lock().unwrap();
        seen.stored.extend_from_slice(next);
        for &(p, o) in next {
            if let Some(c) = checkpoints.get(&p) {
                seen.checkpoints.push((p, o, c.clone()));
            }
        }
    }

    async fn close(self) {
        self.seen.lock().unwrap().closed = true;
    }
}

/// Produces one output per record, acknowledged when the test says so; with `checkpoints`,
/// sets the partition's checkpoint `at {offset}` on every even offset.
struct Echo {
    seen: Shared,
    checkpoints: bool,
}

impl Stage for Echo {
    const NAME: &'static str = "echo";

    async fn on_record(&mut self, r: Record<'_>, out: &mut Outputs) {
        let (tx, rx) = oneshot::channel();
        let mut seen = self.seen.lock().unwrap();
        seen.handled.push((r.partition, r.offset));
        seen.acks.push(((r.partition, r.offset), tx));
        out.push(r.partition, r.offset, async move {
            let _ = rx.await;
        });
        if self.checkpoints && r.offset % 2 == 0 {
            out.checkpoint(r.partition, format!("at {}", r.offset));
        }
    }

    fn on_revoked(&mut self, partitions: &[i32]) {
        self.seen
            .lock()
            .unwrap()
            .stage_revoked
            .extend_from_slice(partitions);
    }
}

struct Harness {
    steps: mpsc::UnboundedSender<Step>,
    seen: Shared,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Harness {
    fn start(max_in_flight: usize) -> Self {
        Self::start_with(max_in_flight, false)
    }

    fn start_with(max_in_flight: usize, checkpoints: bool) -> Self {
        let (steps, rx) = mpsc::unbounded_channel();
        let seen = Shared::default();
        let input = Scripted {
            steps: tokio::sync::Mutex::new(rx),
            seen: seen.clone(),
        };
        let mut stage = Echo {
            seen: seen.clone(),
            checkpoints,
        };
        let shutdown = CancellationToken::new();
        let limits = Limits {
            max_in_flight,
            shutdown_timeout: Duration::from_secs(5),
        };
        let stop = shutdown.clone();
        let task = tokio::spawn(async move { run(input, &mut stage, limits, &stop).await });
        Self {
            steps,
            seen,
            shutdown,
            task,
        }
    }

    fn send(&self, steps: impl IntoIterator<Item = Step>) {
        for s in steps {
            self.steps.send(s).unwrap();
        }
    }

    /// Waits (bounded) until `f` holds of what was seen.
    async fn until(&self, what: &str, f: impl Fn(&Seen) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !f(&self.seen.lock().unwrap()) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Lets the runner make whatever progress it can.
    async fn settle(&self) {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    fn ack(&self, record: (i32, i64)) {
        let mut seen = self.seen.lock().unwrap();
        let i = seen
            .acks
            .iter()
            .position(|(r, _)| *r == record)
            .unwrap_or_else(|| panic!("no output for {record:?}"));
        let (_, tx) = seen.acks.remove(i);
        let _ = tx.send(());
    }

    fn stored(&self) -> Vec<(i32, i64)> {
        self.seen.lock().unwrap().stored.clone()
    }

    async fn stop(self) -> Shared {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("runner stops")
            .expect("runner task");
        self.seen
    }
}

#[tokio::test]
async fn offsets_are_stored_only_after_delivery_and_in_partition_order() {
    let h = Harness::start(100);
    h.send([Step::Assign(0), Step::Assign(1)]);
    h.send([
        Step::Record(0, 10),
        Step::Record(1, 5),
        Step::Record(0, 11),
        Step::Record(0, 12),
    ]);
    h.until("four records handled", |s| s.handled.len() == 4)
        .await;
    assert_eq!(
        h.seen.lock().unwrap().handled,
        vec![(0, 10), (1, 5), (0, 11), (0, 12)],
        "records reach the stage in the order read"
    );
    h.settle().await;
    assert!(h.stored().is_empty(), "nothing stored before a delivery");

    // A later record of partition 0 acknowledged first: 10 is still open, so the offset
    // stored stays at 10 (read again from there), never past it.
    h.ack((0, 11));
    h.until("partition 0 held at 10", |s| s.stored == [(0, 10)])
        .await;
    h.ack((1, 5));
    h.until("partition 1 stored", |s| s.stored.last() == Some(&(1, 6)))
        .await;
    h.ack((0, 10));
    h.until("partition 0 up to 12", |s| {
        s.stored.last() == Some(&(0, 12))
    })
    .await;
    h.ack((0, 12));
    h.until("partition 0 done", |s| s.stored.last() == Some(&(0, 13)))
        .await;
    assert_eq!(h.stored(), vec![(0, 10), (1, 6), (0, 12), (0, 13)]);
    let seen = h.stop().await;
    assert!(
        seen.lock().unwrap().closed,
        "the input is closed at the end"
    );
}

#[tokio::test]
async fn a_record_received_after_its_partition_was_revoked_is_dropped() {
    let h = Harness::start(100);
    h.send([Step::Assign(0), Step::Record(0, 0)]);
    h.until("first record", |s| s.handled.len() == 1).await;
    // The broker revokes partition 0 inside the next recv(), which still returns a record of
    // it fetched before the rebalance.
    h.send([Step::Revoke(0), Step::Record(0, 1)]);
    h.until("revocation handled", |s| s.stage_revoked == [0])
        .await;
    h.settle().await;
    assert_eq!(
        h.seen.lock().unwrap().handled,
        vec![(0, 0)],
        "the record of the revoked partition never reaches the stage"
    );
    // The acknowledgement of an output of the revoked partition stores nothing.
    h.ack((0, 0));
    h.settle().await;
    assert!(h.stored().is_empty(), "{:?}", h.stored());

    // Assigned again (from the committed offset): tracked afresh.
    h.send([Step::Assign(0), Step::Record(0, 0)]);
    h.until("re-read record", |s| s.handled.len() == 2).await;
    h.ack((0, 0));
    h.until("stored after reassignment", |s| s.stored == [(0, 1)])
        .await;
    h.stop().await;
}

#[tokio::test]
async fn reading_pauses_while_max_in_flight_outputs_wait() {
    let h = Harness::start(2);
    h.send([
        Step::Assign(0),
        Step::Record(0, 0),
        Step::Record(0, 1),
        Step::Record(0, 2),
    ]);
    h.until("two records handled", |s| s.handled.len() == 2)
        .await;
    h.settle().await;
    assert_eq!(h.seen.lock().unwrap().handled.len(), 2, "backpressure");
    h.ack((0, 0));
    h.until("the third record after an acknowledgement", |s| {
        s.handled.len() == 3
    })
    .await;
    h.ack((0, 1));
    h.ack((0, 2));
    h.until("all stored", |s| s.stored.last() == Some(&(0, 3)))
        .await;
    h.stop().await;
}

#[tokio::test]
async fn the_drain_at_shutdown_waits_for_outputs_in_flight() {
    let h = Harness::start(100);
    h.send([Step::Assign(0), Step::Record(0, 7)]);
    h.until("record handled", |s| s.handled.len() == 1).await;
    h.shutdown.cancel();
    h.settle().await;
    assert!(
        !h.seen.lock().unwrap().closed,
        "still draining: the output is not acknowledged"
    );
    h.ack((0, 7));
    let seen = h.stop().await;
    let seen = seen.lock().unwrap();
    assert_eq!(seen.stored, vec![(0, 8)], "acknowledged while draining");
    assert!(seen.closed);
}

#[tokio::test]
async fn a_checkpoint_is_stored_with_every_later_offset_of_its_partition_until_revoked() {
    let h = Harness::start_with(100, true);
    let checkpoints = |h: &Harness| h.seen.lock().unwrap().checkpoints.clone();
    h.send([Step::Assign(0), Step::Assign(1), Step::Record(0, 0)]);
    h.until("first record", |s| s.handled.len() == 1).await;
    h.ack((0, 0));
    h.until("stored", |s| s.stored == [(0, 1)]).await;
    assert_eq!(checkpoints(&h), vec![(0, 1, "at 0".to_string())]);
    // Offset 1 sets none: the latest one goes with its offset. Partition 1's is its own.
    h.send([Step::Record(0, 1), Step::Record(1, 2)]);
    h.until("two more", |s| s.handled.len() == 3).await;
    h.ack((0, 1));
    h.ack((1, 2));
    h.until("both stored", |s| s.stored.len() == 3).await;
    let mut seen = checkpoints(&h);
    seen.sort();
    assert_eq!(
        seen,
        vec![
            (0, 1, "at 0".to_string()),
            (0, 2, "at 0".to_string()),
            (1, 3, "at 2".to_string())
        ]
    );
    // Revoked and assigned again: the old checkpoint is gone.
    h.send([Step::Revoke(0), Step::Assign(0), Step::Record(0, 1)]);
    h.until("re-read", |s| s.handled.len() == 4).await;
    h.ack((0, 1));
    h.until("stored again", |s| s.stored.len() == 4).await;
    assert_eq!(h.stored().last(), Some(&(0, 2)));
    assert_eq!(
        checkpoints(&h).len(),
        3,
        "no checkpoint after the revocation"
    );
    h.stop().await;
}
