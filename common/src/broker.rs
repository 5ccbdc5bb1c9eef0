//! The embedded Kafka-protocol broker: librdkafka's mock cluster, owned by a dedicated thread.
//!
//! It listens on real TCP ports and serves produce, fetch, consumer groups, offset commits and
//! headers to any Kafka client in any process. Topics must be created through it (the mock
//! ignores the admin API's CreateTopics); unknown topics are auto-created with 4 partitions.
//! It keeps only ~5 MiB or 100k batches per partition, so consumers must keep up with producers.

use std::sync::mpsc;
use std::thread::JoinHandle;

use rdkafka::error::KafkaError;
use rdkafka::mocking::MockCluster;

enum Command {
    CreateTopic {
        name: String,
        partitions: i32,
        reply: mpsc::Sender<Result<(), KafkaError>>,
    },
    Stop,
}

/// A running mock cluster. Dropping it stops the broker (its listeners close).
pub struct EmbeddedBroker {
    bootstrap: String,
    tx: mpsc::Sender<Command>,
    thread: Option<JoinHandle<()>>,
}

/// Why the embedded broker could not start or create a topic.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("mock cluster failed to start: {0}")]
    Start(KafkaError),
    #[error("creating topic {topic}: {source}")]
    CreateTopic { topic: String, source: KafkaError },
    #[error("the mock cluster thread is gone")]
    Gone,
}

impl EmbeddedBroker {
    /// Client settings for this broker, from the shipped ones: the mock's workarounds live here
    /// and only here. It does not wake a waiting fetch when data arrives (every consume hop
    /// waits up to `fetch.wait.max.ms`), and its rebalances wait a full session timeout.
    pub fn client_settings(kafka: crate::kafka::KafkaConfig) -> crate::kafka::KafkaConfig {
        crate::kafka::KafkaConfig {
            fetch_wait_max: std::time::Duration::from_millis(5),
            session_timeout: std::time::Duration::from_secs(3),
            heartbeat_interval: std::time::Duration::from_millis(500),
            ..kafka
        }
    }

    /// Starts a one-broker mock cluster on a free port.
    pub fn start() -> Result<Self, BrokerError> {
        let (tx, rx) = mpsc::channel::<Command>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<String, KafkaError>>();
        let thread = std::thread::Builder::new()
            .name("mock-kafka".into())
            .spawn(move || {
                let cluster = match MockCluster::new(1) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                while let Ok(cmd) = rx.recv() {
                    match cmd {
                        Command::CreateTopic {
                            name,
                            partitions,
                            reply,
                        } => {
                            let _ = reply.send(cluster.create_topic(&name, partitions, 1));
                        }
                        Command::Stop => break,
                    }
                }
                drop(cluster);
            })
            .map_err(|_| BrokerError::Gone)?;
        let bootstrap = ready_rx
            .recv()
            .map_err(|_| BrokerError::Gone)?
            .map_err(BrokerError::Start)?;
        Ok(Self {
            bootstrap,
            tx,
            thread: Some(thread),
        })
    }

    /// Starts a broker and creates `topics` with `partitions` partitions each.
    pub fn with_topics<S: AsRef<str>>(
        partitions: i32,
        topics: impl IntoIterator<Item = S>,
    ) -> Result<Self, BrokerError> {
        let b = Self::start()?;
        for t in topics {
            b.create_topic(t.as_ref(), partitions)?;
        }
        Ok(b)
    }

    /// `host:port` of the broker.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// Creates a topic (no-op if it exists with the same partition count).
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<(), BrokerError> {
        let (reply, rx) = mpsc::channel();
        self.tx
            .send(Command::CreateTopic {
                name: name.to_string(),
                partitions,
                reply,
            })
            .map_err(|_| BrokerError::Gone)?;
        rx.recv()
            .map_err(|_| BrokerError::Gone)?
            .map_err(|source| BrokerError::CreateTopic {
                topic: name.to_string(),
                source,
            })
    }

    /// Stops the broker now (also done on drop).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.tx.send(Command::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        self.shutdown();
    }
}
