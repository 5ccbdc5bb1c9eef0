#!/usr/bin/env python3
"""Per-stage cost table from a CPU profile of `riskstream bench worker`.

Reads folded stacks (`perf script | inferno-collapse-perf --all`) on stdin and prints a
Markdown table: share of all CPU samples per stage of the worker's hot path. A sample goes
to the deepest frame that names a stage (so serde inside the feature engine counts as
features, a span's bookkeeping inside scoring as spans); samples of the bench's own load
generator and reader are one row, kept apart. Used by scripts/profile-worker.
"""
import re
import sys

# (stage, pattern over one frame). Order only breaks ties within a frame.
STAGES = [
    ("spans (tracing, OpenTelemetry, export)",
     r"tracing_opentelemetry|opentelemetry|tracing_subscriber|tracing_core|tracing::span|"
     r"tracing::instrument|KafkaSpanExporter|link_span|remote_context"),
    ("decode (event JSON, internal records)",
     r"decode_event|EventDecoder|[Dd]eserializ|serde_json::de::|from_slice"),
    ("features (window state, moka)", r"riskstream_features::|moka::"),
    ("scoring (rules, model, lists)", r"riskstream_scoring::|cel::|cel_interpreter"),
    ("encode (decision, internal records)",
     r"serde_json::ser::|[^e]Serializ|to_json_bytes|serde_json::value::ser|to_vec"),
    ("produce (client side)",
     r"rd_kafka_producev|rd_kafka_msg_new|rd_kafka_produce|FutureProducer|BaseProducer|"
     r"try_enqueue|produce_in_order|OutRecord"),
    ("commit, offsets", r"rd_kafka_commit|offsets_store|store_offset|Commits::|OffsetTracker"),
    ("consume (client side)",
     r"rd_kafka_consume|rd_kafka_consumer_poll|rd_kafka_poll|StreamConsumer|MessageStream|"
     r"BorrowedMessage|rd_kafka_queue_poll"),
]
HARNESS = re.compile(r"bench_worker::(measure|passthrough|generate|Input)")
COMPILED = [(name, re.compile(p)) for name, p in STAGES]
LIBRDKAFKA_THREAD = re.compile(r"^(rdk:|producer_pollin)")
OTEL_THREAD = re.compile(r"^OpenTelemetry")


def stage_of(frames):
    thread = frames[0]
    if OTEL_THREAD.match(thread):
        return STAGES[0][0]
    if LIBRDKAFKA_THREAD.match(thread):
        return "librdkafka threads (network, protocol, batching)"
    if any(HARNESS.search(f) for f in frames):
        return "bench harness (load generator, reader)"
    found = None
    for f in frames[1:]:
        for name, pat in COMPILED:
            if pat.search(f):
                found = name
                break
    return found or "runtime, allocator, other"


def main():
    totals = {}
    total = 0
    for line in sys.stdin:
        line = line.rstrip("\n")
        if not line:
            continue
        stack, _, n = line.rpartition(" ")
        n = int(n)
        total += n
        s = stage_of(stack.split(";"))
        totals[s] = totals.get(s, 0) + n
    if not total:
        sys.exit("no samples on stdin")
    harness = totals.get("bench harness (load generator, reader)", 0)
    print("| stage | share of all CPU | share of the worker's CPU |")
    print("| --- | ---: | ---: |")
    for name, n in sorted(totals.items(), key=lambda kv: -kv[1]):
        worker = "" if name.startswith("bench harness") else f"{100 * n / (total - harness):.1f}%"
        print(f"| {name} | {100 * n / total:.1f}% | {worker} |")


if __name__ == "__main__":
    main()
