//! The one way tests start a worker: [`config`] (the shipped features, rules, models and lists,
//! the admin port on 0, a unique consumer group) and [`TestWorker::spawn`], which builds and
//! runs it in the test's runtime until [`TestWorker::stop`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use riskstream_common::kafka::Topics;
use riskstream_common::shutdown::CancellationToken;
use riskstream_feature_worker::{App, Config, WorkerConfig};
use riskstream_testkit::kafka::TestKafka;
use serde_json::Value;
use tokio::task::JoinHandle;

/// Bound on a worker's drain at [`TestWorker::stop`].
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A path of the repository.
pub fn repo(path: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join(path)
}

/// A worker of `broker` on `topics` with the shipped configuration (worker defaults otherwise):
/// tests change what they are about.
pub fn config(broker: &TestKafka, topics: &Topics) -> Config {
    let mut worker = WorkerConfig {
        listen: "127.0.0.1:0".into(),
        group_id: riskstream_testkit::unique("workers"),
        features_path: repo("config/features.toml"),
        ..WorkerConfig::default()
    };
    worker.scoring.rules_path = repo("config/rules.toml");
    worker.scoring.models_dir = repo("config/models");
    worker.scoring.lists_path = Some(repo("config/lists/lists.csv"));
    Config {
        kafka: broker.kafka_config(topics),
        worker,
    }
}

/// A running worker.
pub struct TestWorker {
    admin: SocketAddr,
    shutdown: CancellationToken,
    handle: JoinHandle<()>,
}

impl TestWorker {
    /// Builds the worker (its consumer subscribed, its admin port bound) and runs it.
    pub async fn spawn(config: Config) -> Self {
        let shutdown = CancellationToken::new();
        let app = App::build(config, shutdown.clone())
            .await
            .expect("worker builds");
        let admin = app.local_addr();
        let handle = tokio::spawn(async move {
            app.run_until_stopped().await.expect("worker runs");
        });
        Self {
            admin,
            shutdown,
            handle,
        }
    }

    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        reqwest::get(format!("http://{}{path}", self.admin))
            .await
            .expect("admin request")
    }

    /// The admin `/metrics` text.
    pub async fn metrics(&self) -> String {
        self.get("/metrics")
            .await
            .text()
            .await
            .expect("metrics text")
    }

    /// The admin `/v1/rules` document.
    pub async fn rules(&self) -> Value {
        self.get("/v1/rules")
            .await
            .json()
            .await
            .expect("rules json")
    }

    /// Stops the worker and waits for its drain; panics if it failed or did not stop in time.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(STOP_TIMEOUT, self.handle)
            .await
            .expect("worker drains in time")
            .expect("worker task");
    }
}
