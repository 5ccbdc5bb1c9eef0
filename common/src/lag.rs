//! Consumer lag per stage, as `kafka-consumer-groups.sh` reports it: for every partition a
//! consumer is assigned, the high watermark minus the committed (stored) offset, summed. Read
//! from librdkafka's statistics (`statistics.interval.ms`), so it costs no extra requests; or,
//! for a consumer loop that is blocked (statistics arrive only while it polls), asked from the
//! broker ([`committed_lag_from_broker`]).
//! The gauge's only label is the stage (`local`, `route`, `state`, `join`, `spans`,
//! `decisions`), never a topic or partition of a test's random name.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use rdkafka::ClientConfig;
use rdkafka::Statistics;
use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::error::KafkaError;

use crate::metrics::{Family, Gauge};

/// How often librdkafka reports statistics to a consumer with a [`LagReporter`].
pub const STATS_INTERVAL: Duration = Duration::from_secs(5);

/// The label of a lag gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabel {
    pub stage: String,
}

/// The lag gauges of a service, one per stage.
pub type LagGauges = Family<StageLabel, Gauge>;

/// Sets a stage's gauge from each statistics report of its consumer.
#[derive(Clone, Debug)]
pub struct LagReporter {
    gauges: LagGauges,
    stage: &'static str,
}

impl LagReporter {
    pub fn new(gauges: LagGauges, stage: &'static str) -> Self {
        Self { gauges, stage }
    }

    /// Turns statistics on in a consumer's configuration (needed for [`Self::report`]).
    pub fn enable(config: &mut ClientConfig) {
        config.set(
            "statistics.interval.ms",
            STATS_INTERVAL.as_millis().to_string(),
        );
    }

    pub fn report(&self, stats: &Statistics) {
        self.set(committed_lag(stats));
    }

    /// Sets the stage's gauge to `lag` (from [`committed_lag_from_broker`]).
    pub fn set(&self, lag: i64) {
        self.gauges
            .get_or_create(&StageLabel {
                stage: self.stage.to_string(),
            })
            .set(lag);
    }
}

/// The same lag asked from the broker (committed offsets from the group coordinator, high
/// watermarks from the leaders; a partition without a commit counts from its low watermark),
/// for the partitions `consumer` is assigned. For a consumer whose loop is blocked: librdkafka
/// hands statistics over only when the consumer is polled, so [`LagReporter::report`] stops
/// while nothing polls. Blocking (network round trips, each bounded by `timeout`).
pub fn committed_lag_from_broker<C: ConsumerContext, K: Consumer<C>>(
    consumer: &K,
    timeout: Duration,
) -> Result<i64, KafkaError> {
    let assignment = consumer.assignment()?;
    let committed = consumer.committed_offsets(assignment, timeout)?;
    let mut lag = 0;
    for e in committed.elements() {
        let (low, high) = consumer.fetch_watermarks(e.topic(), e.partition(), timeout)?;
        let from = e.offset().to_raw().filter(|o| *o >= 0).unwrap_or(low);
        lag += (high - from).max(0);
    }
    Ok(lag)
}

/// Messages behind the high watermark, from the committed offsets of the partitions this
/// consumer is assigned (librdkafka's `consumer_lag_stored`; unknown values, -1, are skipped).
pub fn committed_lag(stats: &Statistics) -> i64 {
    stats
        .topics
        .values()
        .flat_map(|t| t.partitions.values())
        .filter(|p| p.partition >= 0 && p.desired && p.consumer_lag_stored >= 0)
        .map(|p| p.consumer_lag_stored)
        .sum()
}

/// A consumer context that reports lag and quiets end-of-partition events; for consumers
/// that need no rebalance logic of their own.
#[derive(Clone, Debug)]
pub struct LagContext(pub LagReporter);

impl rdkafka::ClientContext for LagContext {
    fn stats(&self, statistics: Statistics) {
        self.0.report(&statistics);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        crate::kafka::log_client_error(&error, reason);
    }
}

impl ConsumerContext for LagContext {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Part of a real librdkafka statistics report (two assigned partitions, one that is not,
    /// and the internal `-1` partition).
    const STATS: &str = r#"{
      "name": "c#consumer-1", "client_id": "c", "type": "consumer", "ts": 1, "time": 1,
      "age": 1, "replyq": 0, "msg_cnt": 0, "msg_size": 0, "msg_max": 0, "msg_size_max": 0,
      "simple_cnt": 0, "metadata_cache_cnt": 1, "brokers": {}, "tx": 0, "tx_bytes": 0,
      "rx": 0, "rx_bytes": 0, "txmsgs": 0, "txmsg_bytes": 0, "rxmsgs": 0, "rxmsg_bytes": 0,
      "topics": { "events": { "topic": "events", "age": 1, "metadata_age": 1,
        "batchsize": {"min":0,"max":0,"avg":0,"sum":0,"stddev":0,"p50":0,"p75":0,"p90":0,"p95":0,"p99":0,"p99_99":0,"outofrange":0,"hdrsize":0,"cnt":0},
        "batchcnt": {"min":0,"max":0,"avg":0,"sum":0,"stddev":0,"p50":0,"p75":0,"p90":0,"p95":0,"p99":0,"p99_99":0,"outofrange":0,"hdrsize":0,"cnt":0},
        "partitions": {
          "0": {"partition":0,"broker":1,"leader":1,"desired":true,"unknown":false,"msgq_cnt":0,"msgq_bytes":0,"xmit_msgq_cnt":0,"xmit_msgq_bytes":0,"fetchq_cnt":0,"fetchq_size":0,"fetch_state":"active","query_offset":0,"next_offset":0,"app_offset":0,"stored_offset":0,"committed_offset":10,"eof_offset":0,"lo_offset":0,"hi_offset":25,"ls_offset":25,"consumer_lag":5,"consumer_lag_stored":15,"txmsgs":0,"txbytes":0,"rxmsgs":0,"rxbytes":0,"msgs":0,"rx_ver_drops":0,"msgs_inflight":0,"next_ack_seq":0,"next_err_seq":0,"acked_msgid":0},
          "1": {"partition":1,"broker":1,"leader":1,"desired":true,"unknown":false,"msgq_cnt":0,"msgq_bytes":0,"xmit_msgq_cnt":0,"xmit_msgq_bytes":0,"fetchq_cnt":0,"fetchq_size":0,"fetch_state":"active","query_offset":0,"next_offset":0,"app_offset":0,"stored_offset":0,"committed_offset":3,"eof_offset":0,"lo_offset":0,"hi_offset":10,"ls_offset":10,"consumer_lag":0,"consumer_lag_stored":7,"txmsgs":0,"txbytes":0,"rxmsgs":0,"rxbytes":0,"msgs":0,"rx_ver_drops":0,"msgs_inflight":0,"next_ack_seq":0,"next_err_seq":0,"acked_msgid":0},
          "2": {"partition":2,"broker":1,"leader":1,"desired":false,"unknown":false,"msgq_cnt":0,"msgq_bytes":0,"xmit_msgq_cnt":0,"xmit_msgq_bytes":0,"fetchq_cnt":0,"fetchq_size":0,"fetch_state":"none","query_offset":0,"next_offset":0,"app_offset":0,"stored_offset":0,"committed_offset":0,"eof_offset":0,"lo_offset":0,"hi_offset":99,"ls_offset":99,"consumer_lag":99,"consumer_lag_stored":99,"txmsgs":0,"txbytes":0,"rxmsgs":0,"rxbytes":0,"msgs":0,"rx_ver_drops":0,"msgs_inflight":0,"next_ack_seq":0,"next_err_seq":0,"acked_msgid":0},
          "-1": {"partition":-1,"broker":-1,"leader":-1,"desired":false,"unknown":false,"msgq_cnt":0,"msgq_bytes":0,"xmit_msgq_cnt":0,"xmit_msgq_bytes":0,"fetchq_cnt":0,"fetchq_size":0,"fetch_state":"none","query_offset":0,"next_offset":0,"app_offset":0,"stored_offset":0,"committed_offset":0,"eof_offset":0,"lo_offset":0,"hi_offset":0,"ls_offset":0,"consumer_lag":-1,"consumer_lag_stored":-1,"txmsgs":0,"txbytes":0,"rxmsgs":0,"rxbytes":0,"msgs":0,"rx_ver_drops":0,"msgs_inflight":0,"next_ack_seq":0,"next_err_seq":0,"acked_msgid":0}
        } } }
    }"#;

    #[test]
    fn lag_sums_the_committed_lag_of_assigned_partitions() {
        let stats: Statistics = serde_json::from_str(STATS).expect("statistics JSON");
        assert_eq!(committed_lag(&stats), 15 + 7);
        let gauges = LagGauges::default();
        LagReporter::new(gauges.clone(), "local").report(&stats);
        let g = gauges.get_or_create(&StageLabel {
            stage: "local".into(),
        });
        assert_eq!(g.get(), 22);
    }
}
