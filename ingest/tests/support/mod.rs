//! The one way ingest tests start ingest: [`spawn_app`] (port 0, the test's broker and topics)
//! and the [`TestApp`] handle that posts to it; [`topics`] and [`event`] make a test's names and
//! a valid event.
#![allow(dead_code)]

use std::net::SocketAddr;

use riskstream_common::kafka::{KafkaConfig, Topics};
use riskstream_common::shutdown::CancellationToken;
use riskstream_ingest::{App, Config, IngestConfig};
use riskstream_testkit::kafka::TestKafka;
use serde_json::{Value, json};

pub struct TestApp {
    pub addr: SocketAddr,
    pub kafka: KafkaConfig,
    pub shutdown: CancellationToken,
    pub handle: tokio::task::JoinHandle<()>,
    pub http: reqwest::Client,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn post(
        &self,
        ctype: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let r = self
            .http
            .post(self.url("/v1/events"))
            .header("content-type", ctype)
            .body(body)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r.json::<Value>().await.unwrap_or(Value::Null);
        (status, body, headers)
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

pub async fn spawn_app(broker: &TestKafka, topics: &Topics, ingest: IngestConfig) -> TestApp {
    let kafka = broker.kafka_config(topics);
    let config = Config {
        kafka: kafka.clone(),
        ingest: IngestConfig {
            listen: "127.0.0.1:0".into(),
            ..ingest
        },
    };
    let shutdown = CancellationToken::new();
    let app = App::build(config, shutdown.clone())
        .await
        .expect("build ingest");
    let addr = app.local_addr();
    let handle = tokio::spawn(async move {
        app.run_until_stopped().await.expect("ingest run");
    });
    TestApp {
        addr,
        kafka,
        shutdown,
        handle,
        http: reqwest::Client::new(),
    }
}

pub fn topics() -> Topics {
    Topics::with_suffix(&riskstream_testkit::unique("ingest"))
}

pub fn event(account: &str, amount: f64) -> Value {
    json!({
        "event_time": riskstream_common::now_ms() - 1000,
        "account_id": account, "card_id": format!("card-{account}"),
        "amount": amount, "currency": "EUR", "country": "DE", "type": "payment",
        "attributes": {"note": "hello"}
    })
}
