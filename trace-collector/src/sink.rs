//! The batching writer into one table of the trace store (ClickHouse or memory): a bounded queue (counted in rows), batches cut
//! by rows or time, retries with exponential backoff and jitter on transient errors, and one
//! acknowledgement per submission once its rows are stored (or definitely not).
//!
//! Backpressure: [`Sink::try_submit`] fails at once when the queue is full (OTLP receivers answer
//! 503 / `RESOURCE_EXHAUSTED`); [`Sink::submit`] waits for room (the Kafka receivers stop
//! consuming meanwhile). Memory is bounded by `queue_max_spans` rows per table.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng as _;
use riskstream_store::{StoreError, StoredRow, TraceStore};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, TableLabels};

/// How a submission ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkError {
    /// The queue has no room for the rows now: retry later.
    #[error("queue full: {queued} of {capacity} rows waiting")]
    Full { queued: usize, capacity: usize },
    /// The writer has stopped (shutdown); the rows were not stored.
    #[error("the writer has stopped")]
    Closed,
    /// The store refused the rows for good (not a transient failure).
    #[error("the trace store rejected the rows: {0}")]
    Rejected(String),
}

/// Batching and retry settings.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    pub batch_max_rows: usize,
    pub batch_max_wait: Duration,
    pub queue_max_rows: usize,
    pub retry_backoff_min: Duration,
    pub retry_backoff_max: Duration,
    /// Longest time one insert request may take.
    pub insert_timeout: Duration,
    /// Inserts in flight at once per table.
    pub insert_concurrency: usize,
}

/// Resolves once the submitted rows are stored (`Ok`) or definitely not.
pub type Ack = oneshot::Receiver<Result<(), SinkError>>;

struct Item<R> {
    rows: Vec<R>,
    receiver: &'static str,
    _permit: OwnedSemaphorePermit,
    ack: oneshot::Sender<Result<(), SinkError>>,
}

/// The submitting side of a table writer. Cheap to clone; the writer stops once every clone is
/// dropped and the queue is drained.
pub struct Sink<R> {
    tx: mpsc::UnboundedSender<Item<R>>,
    permits: Arc<Semaphore>,
    capacity: usize,
    table: &'static str,
    metrics: Metrics,
}

impl<R> Clone for Sink<R> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            permits: self.permits.clone(),
            capacity: self.capacity,
            table: self.table,
            metrics: self.metrics.clone(),
        }
    }
}

impl<R: StoredRow> Sink<R> {
    /// Starts the writer task for `R`'s table. `hard_stop` makes it give up retrying (shutdown
    /// deadline): pending submissions then resolve with [`SinkError::Closed`].
    pub fn spawn(
        store: Arc<dyn TraceStore>,
        config: SinkConfig,
        metrics: Metrics,
        hard_stop: CancellationToken,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let table = R::TABLE;
        let (tx, rx) = mpsc::unbounded_channel();
        let capacity = config.queue_max_rows.max(1);
        let permits = Arc::new(Semaphore::new(capacity));
        let sink = Self {
            tx,
            permits: permits.clone(),
            capacity,
            table,
            metrics: metrics.clone(),
        };
        let writer = Writer {
            store,
            table,
            config,
            metrics,
            hard_stop,
            permits,
            capacity,
        };
        let handle = tokio::spawn(writer.run(rx));
        (sink, handle)
    }

    /// Rows accepted and not yet stored.
    pub fn queued(&self) -> usize {
        self.capacity - self.permits.available_permits()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn permits_for(&self, rows: usize) -> u32 {
        u32::try_from(rows.clamp(1, self.capacity)).unwrap_or(u32::MAX)
    }

    fn enqueue(
        &self,
        rows: Vec<R>,
        receiver: &'static str,
        permit: OwnedSemaphorePermit,
    ) -> Result<Ack, SinkError> {
        let (ack, rx) = oneshot::channel();
        self.tx
            .send(Item {
                rows,
                receiver,
                _permit: permit,
                ack,
            })
            .map_err(|_| SinkError::Closed)?;
        self.update_gauge();
        Ok(rx)
    }

    fn update_gauge(&self) {
        self.metrics
            .queue_rows
            .get_or_create(&TableLabels {
                table: self.table.into(),
            })
            .set(i64::try_from(self.queued()).unwrap_or(i64::MAX));
    }

    /// Queues `rows` if there is room now, without waiting.
    pub fn try_submit(&self, rows: Vec<R>, receiver: &'static str) -> Result<Ack, SinkError> {
        let n = self.permits_for(rows.len());
        match self.permits.clone().try_acquire_many_owned(n) {
            Ok(permit) => self.enqueue(rows, receiver, permit),
            Err(tokio::sync::TryAcquireError::NoPermits) => Err(SinkError::Full {
                queued: self.queued(),
                capacity: self.capacity,
            }),
            Err(tokio::sync::TryAcquireError::Closed) => Err(SinkError::Closed),
        }
    }

    /// Queues `rows`, waiting for room (backpressure).
    pub async fn submit(&self, rows: Vec<R>, receiver: &'static str) -> Result<Ack, SinkError> {
        let n = self.permits_for(rows.len());
        let permit = self
            .permits
            .clone()
            .acquire_many_owned(n)
            .await
            .map_err(|_| SinkError::Closed)?;
        self.enqueue(rows, receiver, permit)
    }
}

struct Writer {
    store: Arc<dyn TraceStore>,
    table: &'static str,
    config: SinkConfig,
    metrics: Metrics,
    hard_stop: CancellationToken,
    permits: Arc<Semaphore>,
    capacity: usize,
}

impl Writer {
    async fn run<R: StoredRow>(self, mut rx: mpsc::UnboundedReceiver<Item<R>>) {
        let this = Arc::new(self);
        // Up to `insert_concurrency` inserts in flight: the next batch is serialized while
        // ClickHouse writes the previous one's parts.
        let in_flight = Arc::new(Semaphore::new(this.config.insert_concurrency.max(1)));
        let mut inserts = tokio::task::JoinSet::new();
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            let mut rows: usize = batch[0].rows.len();
            let deadline = tokio::time::Instant::now() + this.config.batch_max_wait;
            while rows < this.config.batch_max_rows {
                tokio::select! {
                    item = rx.recv() => match item {
                        Some(item) => { rows += item.rows.len(); batch.push(item); }
                        None => break,
                    },
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
            let Ok(slot) = in_flight.clone().acquire_owned().await else {
                break;
            };
            let writer = this.clone();
            inserts.spawn(async move {
                writer.flush(batch, rows).await;
                drop(slot);
            });
            while inserts.try_join_next().is_some() {}
        }
        while inserts.join_next().await.is_some() {}
        tracing::debug!(table = this.table, "table writer stopped");
    }

    /// Inserts one batch (retrying) and acknowledges its submissions.
    async fn flush<R: StoredRow>(&self, batch: Vec<Item<R>>, rows: usize) {
        let labels = TableLabels {
            table: self.table.into(),
        };
        let outcome = self.insert_with_retry(&batch, rows).await;
        match &outcome {
            Ok(()) => {
                self.metrics
                    .batch_rows
                    .get_or_create(&labels)
                    .observe(rows as f64);
                for item in &batch {
                    self.metrics.stored(item.receiver, item.rows.len());
                }
                for item in batch {
                    let _ = item.ack.send(Ok(()));
                }
            }
            Err(SinkError::Rejected(_)) if batch.len() > 1 => {
                // One bad submission must not sink the others: store them one by one.
                for item in batch {
                    let n = item.rows.len();
                    let single = self.insert_with_retry(std::slice::from_ref(&item), n).await;
                    if single.is_ok() {
                        self.metrics.stored(item.receiver, n);
                    }
                    let _ = item.ack.send(single);
                }
            }
            Err(e) => {
                for item in batch {
                    let _ = item.ack.send(Err(e.clone()));
                }
            }
        }
        self.metrics
            .queue_rows
            .get_or_create(&labels)
            .set(i64::try_from(self.capacity - self.permits.available_permits()).unwrap_or(0));
    }

    async fn insert_with_retry<R: StoredRow>(
        &self,
        batch: &[Item<R>],
        rows: usize,
    ) -> Result<(), SinkError> {
        let labels = TableLabels {
            table: self.table.into(),
        };
        let mut backoff = self.config.retry_backoff_min;
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let started = Instant::now();
            match self.insert_once(batch).await {
                Ok(()) => {
                    self.metrics
                        .insert_seconds
                        .get_or_create(&labels)
                        .observe(started.elapsed().as_secs_f64());
                    if attempt > 1 {
                        tracing::info!(
                            table = self.table,
                            rows,
                            attempt,
                            "insert succeeded after retries"
                        );
                    }
                    return Ok(());
                }
                Err(e) => {
                    self.metrics.insert_errors.get_or_create(&labels).inc();
                    if !e.is_transient() {
                        tracing::error!(table = self.table, rows, store = self.store.kind(), error = %e, "insert rejected by the store");
                        return Err(SinkError::Rejected(e.to_string()));
                    }
                    if attempt == 1 || attempt.is_power_of_two() {
                        tracing::warn!(table = self.table, rows, attempt, error = %e, "insert failed, retrying");
                    }
                }
            }
            let jitter = rand::rng().random_range(0.5..=1.0);
            let sleep = backoff.mul_f64(jitter);
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = self.hard_stop.cancelled() => {
                    tracing::warn!(table = self.table, rows, "giving up insert at shutdown");
                    return Err(SinkError::Closed);
                }
            }
            backoff = (backoff * 2).min(self.config.retry_backoff_max);
        }
    }

    async fn insert_once<R: StoredRow>(&self, batch: &[Item<R>]) -> Result<(), StoreError> {
        let chunks: Vec<&[R]> = batch.iter().map(|item| item.rows.as_slice()).collect();
        R::insert(self.store.as_ref(), &chunks).await
    }
}
