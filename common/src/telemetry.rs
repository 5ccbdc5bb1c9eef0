//! Telemetry setup: `tracing` logs to stderr (text or JSON) and, through `tracing-opentelemetry`
//! and the OpenTelemetry SDK, spans exported as OTLP: straight to the Kafka `otlp_spans` topic as
//! `ExportTraceServiceRequest` protobuf (the OpenTelemetry Collector Kafka exporter's
//! `otlp_proto` encoding), or over OTLP/HTTP to any collector. Sampling is parent-based with a
//! configurable ratio for new traces.
//!
//! Also the glue between spans and the W3C `traceparent` carried in HTTP and Kafka headers.

use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, TraceContextExt, TraceFlags, TraceState, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};
use prost::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::kafka::KafkaConfig;
use crate::trace_context::TraceParent;

/// Span exporters.
pub mod exporter {
    /// ExportTraceServiceRequest protobuf records on the `otlp_spans` topic.
    pub const KAFKA: &str = "kafka";
    /// OTLP/HTTP protobuf to `otlp_endpoint`.
    pub const OTLP: &str = "otlp";
    pub const NONE: &str = "none";
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// `text` or `json`.
    pub log_format: String,
    /// A `tracing` filter directive such as `info` or `riskstream_ingest=debug,info`;
    /// `RUST_LOG` wins when set.
    pub log_level: String,
    /// Where spans go: `kafka` (the `otlp_spans` topic), `otlp` (OTLP/HTTP), or `none`.
    pub traces_exporter: String,
    /// OTLP/HTTP traces endpoint, for `traces_exporter = "otlp"`.
    pub otlp_endpoint: String,
    /// Share of new traces sampled (0..=1); a caller's sampled flag is always followed.
    pub sampling_ratio: f64,
    /// Spans buffered for export; a span finished while the buffer is full is dropped (the SDK
    /// warns once and reports the count at shutdown). At the SDK's default (2,048) a worker
    /// deciding 6k events/s dropped most of its spans.
    pub span_queue_len: usize,
    /// Most spans per export (one `otlp_spans` record or OTLP request).
    pub span_batch_len: usize,
    /// How often buffered spans are exported when fewer than `span_batch_len` are waiting.
    #[serde(with = "humantime_serde")]
    pub span_export_interval: Duration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_format: "text".into(),
            log_level: "info".into(),
            traces_exporter: exporter::KAFKA.into(),
            otlp_endpoint: "http://127.0.0.1:4318/v1/traces".into(),
            sampling_ratio: 1.0,
            span_queue_len: 65_536,
            span_batch_len: 4_096,
            span_export_interval: Duration::from_secs(1),
        }
    }
}

impl TelemetryConfig {
    pub fn validate(&self) -> Vec<String> {
        let mut v = Vec::new();
        if !matches!(self.log_format.as_str(), "text" | "json") {
            v.push(format!(
                "telemetry.log_format must be \"text\" or \"json\", got {:?}",
                self.log_format
            ));
        }
        if EnvFilter::try_new(&self.log_level).is_err() {
            v.push(format!(
                "telemetry.log_level {:?} is not a valid filter",
                self.log_level
            ));
        }
        if ![exporter::KAFKA, exporter::OTLP, exporter::NONE]
            .contains(&self.traces_exporter.as_str())
        {
            v.push(format!(
                "telemetry.traces_exporter must be \"kafka\", \"otlp\" or \"none\", got {:?}",
                self.traces_exporter
            ));
        }
        if !(0.0..=1.0).contains(&self.sampling_ratio) {
            v.push(format!(
                "telemetry.sampling_ratio must be within 0..=1, got {}",
                self.sampling_ratio
            ));
        }
        if self.span_queue_len == 0 || self.span_batch_len == 0 {
            v.push(
                "telemetry.span_queue_len and telemetry.span_batch_len must be at least 1".into(),
            );
        }
        if self.span_batch_len > self.span_queue_len {
            v.push(format!(
                "telemetry.span_batch_len ({}) must not exceed telemetry.span_queue_len ({})",
                self.span_batch_len, self.span_queue_len
            ));
        }
        if self.span_export_interval.is_zero() {
            v.push("telemetry.span_export_interval must be more than 0".into());
        }
        v
    }

    /// The span batching of this configuration (the demo exports more often).
    fn batch_config(
        &self,
        export_interval: Option<Duration>,
    ) -> opentelemetry_sdk::trace::BatchConfig {
        opentelemetry_sdk::trace::BatchConfigBuilder::default()
            .with_max_queue_size(self.span_queue_len)
            .with_max_export_batch_size(self.span_batch_len.min(self.span_queue_len))
            .with_scheduled_delay(export_interval.unwrap_or(self.span_export_interval))
            .build()
    }
}

/// Keeps the span pipeline alive; flushes and shuts it down when dropped.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.force_flush();
            let _ = p.shutdown_with_timeout(Duration::from_secs(5));
        }
    }
}

/// Installs the global subscriber: logs, and spans of `service_name` to the configured exporter
/// (`kafka` needs `kafka`). Later calls in the same process only log a note.
pub fn init(
    cfg: &TelemetryConfig,
    service_name: &str,
    kafka: Option<&KafkaConfig>,
) -> TelemetryGuard {
    init_with(cfg, service_name, kafka, None)
}

/// The services of one process that runs them all (the demo): a span's `service.name` is the
/// service of the crate that opened it (its `code.module.name`), so a trace through the demo
/// shows the same services as one through separate processes.
pub const DEMO_SERVICES: &[(&str, &str)] = &[
    ("riskstream_ingest", "riskstream-ingest"),
    ("riskstream_feature_worker", "riskstream-worker"),
    ("riskstream_trace_collector", "riskstream-collector"),
    ("riskstream_api", "riskstream-api"),
];

/// For the demo, which runs every service in one process: as [`init`], but the log (at
/// `log_level`) goes to `log_file` (appended), only warnings and errors reach stderr (the
/// terminal shows progress, not a log), and spans are named by [`DEMO_SERVICES`].
/// Spans are exported every `export_delay` (the SDK's default is 5 s), so the demo can look a
/// trace up right after its decision.
pub fn init_for_demo(
    cfg: &TelemetryConfig,
    default_service: &str,
    kafka: Option<&KafkaConfig>,
    log_file: std::fs::File,
    export_delay: Duration,
) -> TelemetryGuard {
    init_with(
        cfg,
        default_service,
        kafka,
        Some(Demo {
            log_file,
            export_delay,
        }),
    )
}

/// What [`init_for_demo`] changes.
struct Demo {
    log_file: std::fs::File,
    export_delay: Duration,
}

fn init_with(
    cfg: &TelemetryConfig,
    service_name: &str,
    kafka: Option<&KafkaConfig>,
    demo: Option<Demo>,
) -> TelemetryGuard {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let provider = build_provider(
        cfg,
        service_name,
        kafka,
        demo.as_ref().map(|d| d.export_delay),
    );
    let log_file = demo.map(|d| d.log_file);
    let otel = provider.as_ref().map(|p| {
        // Only our own spans go to OpenTelemetry; dependencies' spans stay in the logs.
        let targets = tracing_subscriber::filter::Targets::new()
            .with_target("riskstream", tracing::Level::INFO)
            .with_default(tracing::level_filters::LevelFilter::OFF);
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(service_name.to_string()))
            .with_filter(targets)
    });
    let registry = tracing_subscriber::registry().with(otel);
    let result = match log_file {
        Some(file) => {
            let to_file = tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(file))
                .with_filter(filter);
            let warnings = tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(tracing::level_filters::LevelFilter::WARN);
            registry.with(to_file).with(warnings).try_init()
        }
        None => {
            let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
            if cfg.log_format == "json" {
                registry.with(fmt.json().with_filter(filter)).try_init()
            } else {
                registry.with(fmt.with_filter(filter)).try_init()
            }
        }
    };
    if result.is_err() {
        tracing::debug!("telemetry was already initialised in this process");
        return TelemetryGuard { provider: None };
    }
    TelemetryGuard { provider }
}

use tracing_subscriber::Layer as _;

fn build_provider(
    cfg: &TelemetryConfig,
    service_name: &str,
    kafka: Option<&KafkaConfig>,
    demo_export_delay: Option<Duration>,
) -> Option<SdkTracerProvider> {
    let resource = Resource::builder()
        .with_service_name(service_name.to_string())
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(cfg.sampling_ratio)));
    let builder = SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_resource(resource);
    match cfg.traces_exporter.as_str() {
        exporter::KAFKA => {
            let kafka = kafka?;
            match KafkaSpanExporter::new(kafka) {
                Ok(e) => {
                    let e = if demo_export_delay.is_some() {
                        e.with_services(DEMO_SERVICES)
                    } else {
                        e
                    };
                    let processor = opentelemetry_sdk::trace::BatchSpanProcessor::builder(e)
                        .with_batch_config(cfg.batch_config(demo_export_delay))
                        .build();
                    Some(builder.with_span_processor(processor).build())
                }
                Err(e) => {
                    eprintln!("warning: span export to kafka disabled: {e}");
                    None
                }
            }
        }
        exporter::OTLP => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
            use opentelemetry_otlp::WithExportConfig as _;
            match exporter.with_endpoint(cfg.otlp_endpoint.clone()).build() {
                Ok(e) => {
                    let processor = opentelemetry_sdk::trace::BatchSpanProcessor::builder(e)
                        .with_batch_config(cfg.batch_config(demo_export_delay))
                        .build();
                    Some(builder.with_span_processor(processor).build())
                }
                Err(e) => {
                    eprintln!("warning: otlp span export disabled: {e}");
                    None
                }
            }
        }
        _ => None,
    }
}

/// Exports span batches as `ExportTraceServiceRequest` protobuf records to the `otlp_spans`
/// topic, acknowledged by Kafka before the batch counts as exported.
pub struct KafkaSpanExporter {
    producer: FutureProducer,
    topic: String,
    resource: ResourceAttributesWithSchema,
    /// (crate, service) pairs naming spans by the crate that opened them; empty: every span
    /// is of the provider's service.
    services: &'static [(&'static str, &'static str)],
    /// The provider's resource with each of `services` as `service.name`.
    service_resources: Vec<ResourceAttributesWithSchema>,
}

impl KafkaSpanExporter {
    pub fn new(kafka: &KafkaConfig) -> Result<Self, rdkafka::error::KafkaError> {
        let mut k = kafka.clone();
        k.client_id = format!("{}-spans", k.client_id);
        Ok(Self {
            producer: k.producer()?,
            topic: kafka.topics.otlp_spans.clone(),
            resource: ResourceAttributesWithSchema::default(),
            services: &[],
            service_resources: Vec::new(),
        })
    }

    /// Names each span's service by the crate that opened it ([`DEMO_SERVICES`]).
    pub fn with_services(mut self, services: &'static [(&'static str, &'static str)]) -> Self {
        self.services = services;
        self
    }

    /// Which of `services` opened `span` (by its `code.module.name`), if any.
    fn service_of(&self, span: &SpanData) -> Option<usize> {
        let module = span
            .attributes
            .iter()
            .find(|kv| kv.key.as_str() == "code.module.name")?
            .value
            .as_str();
        let krate = module.split("::").next()?;
        self.services.iter().position(|(c, _)| *c == krate)
    }

    fn request(&self, batch: Vec<SpanData>) -> ExportTraceServiceRequest {
        if self.services.is_empty() || self.service_resources.is_empty() {
            return ExportTraceServiceRequest {
                resource_spans: group_spans_by_resource_and_scope(batch, &self.resource),
            };
        }
        let mut groups: Vec<Vec<SpanData>> = vec![Vec::new(); self.services.len() + 1];
        for span in batch {
            let i = self.service_of(&span).unwrap_or(self.services.len());
            groups[i].push(span);
        }
        let mut resource_spans = Vec::new();
        for (i, group) in groups.into_iter().enumerate() {
            if group.is_empty() {
                continue;
            }
            let resource = self.service_resources.get(i).unwrap_or(&self.resource);
            resource_spans.extend(group_spans_by_resource_and_scope(group, resource));
        }
        ExportTraceServiceRequest { resource_spans }
    }
}

impl std::fmt::Debug for KafkaSpanExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSpanExporter")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// The largest `otlp_spans` record the exporter writes: below Kafka's default
/// `message.max.bytes` (1 MiB), so a full export batch of large spans is split rather than
/// refused by the broker as `MessageSizeTooLarge`.
pub const SPAN_RECORD_MAX_BYTES: usize = 512 * 1024;

/// Splits `request` into requests of at most about `max_bytes` encoded each, keeping every
/// span under its own resource and scope. A single span larger than `max_bytes` travels alone.
pub fn split_request(
    request: ExportTraceServiceRequest,
    max_bytes: usize,
) -> Vec<ExportTraceServiceRequest> {
    if request.encoded_len() <= max_bytes {
        return vec![request];
    }
    let mut out = Vec::new();
    let mut current = ExportTraceServiceRequest::default();
    let mut current_len = 0usize;
    for rs in request.resource_spans {
        let mut rs_head = rs.clone();
        rs_head.scope_spans.clear();
        for ss in rs.scope_spans {
            let mut ss_head = ss.clone();
            ss_head.spans.clear();
            // Resource and scope are repeated in every piece; count them once per piece.
            let head_len = rs_head.encoded_len() + ss_head.encoded_len() + 16;
            for span in ss.spans {
                let span_len = span.encoded_len() + 8;
                if current_len > 0 && current_len + head_len + span_len > max_bytes {
                    out.push(std::mem::take(&mut current));
                    current_len = 0;
                }
                let same_head = current.resource_spans.last().is_some_and(|r| {
                    r.resource == rs_head.resource
                        && r.schema_url == rs_head.schema_url
                        && r.scope_spans.last().is_some_and(|s| {
                            s.scope == ss_head.scope && s.schema_url == ss_head.schema_url
                        })
                });
                if !same_head {
                    let mut r = rs_head.clone();
                    r.scope_spans.push(ss_head.clone());
                    current.resource_spans.push(r);
                    current_len += head_len;
                }
                let r = current.resource_spans.last_mut().expect("pushed above");
                r.scope_spans
                    .last_mut()
                    .expect("pushed above")
                    .spans
                    .push(span);
                current_len += span_len;
            }
        }
    }
    if current_len > 0 {
        out.push(current);
    }
    out
}

impl SpanExporter for KafkaSpanExporter {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let pieces = split_request(self.request(batch), SPAN_RECORD_MAX_BYTES);
        let enqueued: Result<Vec<_>, _> = pieces
            .iter()
            .map(|piece| {
                let bytes = piece.encode_to_vec();
                self.producer
                    .send_result(FutureRecord::<(), [u8]>::to(&self.topic).payload(&bytes))
                    .map_err(|(e, _)| OTelSdkError::InternalFailure(format!("enqueue spans: {e}")))
            })
            .collect();
        async move {
            for delivery in enqueued? {
                match delivery.await {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => {
                        return Err(OTelSdkError::InternalFailure(format!(
                            "spans not acknowledged: {e}"
                        )));
                    }
                    Err(_) => {
                        return Err(OTelSdkError::InternalFailure("span producer gone".into()));
                    }
                }
            }
            Ok(())
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = resource.into();
        self.service_resources = self
            .services
            .iter()
            .map(|(_, service)| {
                let named = Resource::builder_empty()
                    .with_attributes(
                        resource
                            .iter()
                            .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
                    )
                    .with_service_name(service.to_string())
                    .build();
                (&named).into()
            })
            .collect();
    }
}

/// The OpenTelemetry context of a remote parent given as a W3C traceparent.
pub fn remote_context(parent: Option<&TraceParent>) -> Context {
    match parent {
        Some(p) => Context::new().with_remote_span_context(SpanContext::new(
            p.trace_id,
            p.span_id,
            if p.sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::default()
            },
            true,
            TraceState::default(),
        )),
        None => Context::new(),
    }
}

/// Makes `span` a child of `parent` (when given) and returns the traceparent to send to the
/// next hop: the span's own context when spans are being recorded, otherwise a fresh child id
/// in the same trace (or a new trace), so trace context always travels.
pub fn link_span(span: &tracing::Span, parent: Option<&TraceParent>) -> TraceParent {
    if let Some(p) = parent {
        let _ = span.set_parent(remote_context(Some(p)));
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        TraceParent {
            trace_id: sc.trace_id(),
            span_id: sc.span_id(),
            sampled: sc.is_sampled(),
        }
    } else {
        match parent {
            Some(p) => p.child(),
            None => TraceParent::new_root(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_span_buffer_holds_seconds_of_a_busy_worker_not_the_sdks_2048() {
        let cfg = TelemetryConfig::default();
        assert!(cfg.validate().is_empty());
        // BatchConfig's fields are private: its Debug form is what can be read.
        let batch = format!("{:?}", cfg.batch_config(None));
        assert!(batch.contains("max_queue_size: 65536"), "{batch}");
        assert!(batch.contains("max_export_batch_size: 4096"), "{batch}");
        assert!(batch.contains("scheduled_delay: 1s"), "{batch}");
        let demo = format!("{:?}", cfg.batch_config(Some(Duration::from_millis(300))));
        assert!(demo.contains("scheduled_delay: 300ms"), "{demo}");
    }

    #[test]
    fn a_span_batch_larger_than_the_buffer_or_a_zero_interval_is_refused_by_name() {
        let cfg = TelemetryConfig {
            span_queue_len: 100,
            span_batch_len: 200,
            span_export_interval: Duration::ZERO,
            ..TelemetryConfig::default()
        };
        let problems = cfg.validate().join("\n");
        assert!(
            problems.contains("telemetry.span_batch_len (200)"),
            "{problems}"
        );
        assert!(
            problems.contains("telemetry.span_export_interval"),
            "{problems}"
        );
    }
}

#[cfg(test)]
mod split_tests {
    use opentelemetry_proto::tonic::common::v1::{
        AnyValue, InstrumentationScope, KeyValue as PKv, any_value,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource as PResource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use prost::Message as _;

    use super::*;

    fn span(i: u32, attr_bytes: usize) -> Span {
        Span {
            trace_id: vec![1; 16],
            span_id: i.to_be_bytes().repeat(2),
            name: format!("span-{i}"),
            attributes: vec![PKv {
                key: "payload".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::StringValue("x".repeat(attr_bytes))),
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn resource(service: &str, scopes: &[(&str, std::ops::Range<u32>)]) -> ResourceSpans {
        ResourceSpans {
            resource: Some(PResource {
                attributes: vec![PKv {
                    key: "service.name".into(),
                    value: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(service.into())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_spans: scopes
                .iter()
                .map(|(scope, ids)| ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: (*scope).into(),
                        ..Default::default()
                    }),
                    spans: ids.clone().map(|i| span(i, 900)).collect(),
                    schema_url: String::new(),
                })
                .collect(),
            schema_url: String::new(),
        }
    }

    /// (service, scope, span name) of every span, in order.
    fn flatten(requests: &[ExportTraceServiceRequest]) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for r in requests {
            for rs in &r.resource_spans {
                let service = match &rs.resource.as_ref().unwrap().attributes[0].value {
                    Some(AnyValue {
                        value: Some(any_value::Value::StringValue(s)),
                    }) => s.clone(),
                    other => panic!("service name missing: {other:?}"),
                };
                for ss in &rs.scope_spans {
                    let scope = ss.scope.as_ref().unwrap().name.clone();
                    for s in &ss.spans {
                        out.push((service.clone(), scope.clone(), s.name.clone()));
                    }
                }
            }
        }
        out
    }

    #[test]
    fn a_large_batch_is_split_into_records_below_the_bound_and_keeps_every_span_under_its_resource()
    {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![
                resource("ingest", &[("a", 0..700), ("b", 700..1300)]),
                resource("worker", &[("c", 1300..2000)]),
            ],
        };
        let whole = flatten(std::slice::from_ref(&request));
        assert!(
            request.encoded_len() > 1_000_000,
            "the batch is larger than a Kafka record may be"
        );
        let pieces = split_request(request, SPAN_RECORD_MAX_BYTES);
        assert!(pieces.len() >= 3, "{} pieces", pieces.len());
        for p in &pieces {
            assert!(
                p.encoded_len() <= SPAN_RECORD_MAX_BYTES,
                "{}",
                p.encoded_len()
            );
            // Every piece decodes as the collector will read it.
            let bytes = p.encode_to_vec();
            assert_eq!(
                &ExportTraceServiceRequest::decode(bytes.as_slice()).unwrap(),
                p
            );
        }
        assert_eq!(
            flatten(&pieces),
            whole,
            "every span once, in order, under its resource and scope"
        );
    }

    #[test]
    fn a_small_batch_stays_one_record_and_an_oversized_span_travels_alone() {
        let small = ExportTraceServiceRequest {
            resource_spans: vec![resource("ingest", &[("a", 0..3)])],
        };
        assert_eq!(
            split_request(small.clone(), SPAN_RECORD_MAX_BYTES),
            vec![small]
        );
        let mut big = resource("ingest", &[("a", 0..3)]);
        big.scope_spans[0].spans[1] = span(1, 4_000);
        let pieces = split_request(
            ExportTraceServiceRequest {
                resource_spans: vec![big],
            },
            2_500,
        );
        let counts: Vec<usize> = pieces
            .iter()
            .map(|p| p.resource_spans[0].scope_spans[0].spans.len())
            .collect();
        assert_eq!(counts, vec![1, 1, 1]);
    }
}
