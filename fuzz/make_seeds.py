#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora (fuzz/seeds/TARGET/) from the project's real inputs:
the shipped config files, the event contract's examples, the OTLP specification's example
(as JSON and as protobuf, encoded here with a minimal encoder), the api's documented queries
and the worker's internal records. Deterministic; rerun after changing an input:

    python3 fuzz/make_seeds.py
"""
import hashlib
import json
import pathlib
import re
import shutil

ROOT = pathlib.Path(__file__).resolve().parent.parent
SEEDS = ROOT / "fuzz" / "seeds"


def write(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = SEEDS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()[:16]).write_bytes(data)


# --- events ------------------------------------------------------------------------------
FULL = {
    "event_id": "0192b3c4-5d6e-7f80-9a1b-2c3d4e5f6071",
    "event_time": "2026-09-21T12:00:00.250Z",
    "account_id": "acc-1", "card_id": "card-1", "device_id": "dev-1",
    "ip": "203.0.113.7", "merchant_id": "m-1", "email": "a@example.com",
    "amount": 12.5, "currency": "EUR", "country": "DE", "channel": "web",
    "type": "payment", "attributes": {"mcc": "5411", "synthetic_pattern": "card_testing"},
}
events = [
    FULL,
    {"event_time": 1789999990000, "account_id": "acc-2", "amount": 0.99, "currency": "USD"},
    {"event_time": "2026-09-21T14:00:00+02:00", "account_id": "acc-3", "ip": "2001:db8::1"},
    {"event_time": "not a time", "account_id": "", "amount": -1, "country": "de", "extra": 1},
    {"event_id": 17, "event_time": None, "attributes": [1, 2]},
]
for e in events:
    body = json.dumps(e)
    write("event_decoder", b"\x00" + body.encode())  # JSON body
    write("event_decoder", b"\x02" + body.encode())  # events record (worker)
write("event_decoder", b"\x00" + json.dumps(events).encode())
write("event_decoder", b"\x01" + "\n".join(json.dumps(e) for e in events).encode())
write("event_decoder", b'\x02{"event_id": 17, not json')

# --- OTLP --------------------------------------------------------------------------------
SPEC = json.loads(re.search(r'const SPEC_EXAMPLE: &str = r#"(.*?)"#;',
                            (ROOT / "trace-collector/src/convert.rs").read_text(), re.S).group(1))
write("otlp_json", json.dumps(SPEC, indent=2))
write("otlp_json", '{"resourceSpans":[]}')
bad = json.loads(json.dumps(SPEC))
span = bad["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
span["traceId"] = "00000000000000000000000000000000"
span["links"] = [{"traceId": "5B8EFFF798038103D269B633813FC60C", "spanId": "EEE19B7EC3C1B174",
                  "attributes": [{"key": "l", "value": {"arrayValue": {"values": [{"boolValue": False}]}}}]}]
span["attributes"].append({"key": "kv", "value": {"kvlistValue": {"values": [
    {"key": "b", "value": {"bytesValue": "AAEC"}}]}}})
write("otlp_json", json.dumps(bad))


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(num, wire, payload):
    tag = varint(num << 3 | wire)
    if wire == 0:
        return tag + varint(payload)
    if wire == 1:
        return tag + payload  # 8 bytes
    return tag + varint(len(payload)) + payload


def s(num, text):
    return field(num, 2, text.encode() if isinstance(text, str) else text)


def any_value(v):
    if "stringValue" in v:
        return s(1, v["stringValue"])
    if "boolValue" in v:
        return field(2, 0, int(v["boolValue"]))
    if "intValue" in v:
        return field(3, 0, int(v["intValue"]) & 0xFFFFFFFFFFFFFFFF)
    if "doubleValue" in v:
        import struct
        return field(4, 1, struct.pack("<d", v["doubleValue"]))
    if "arrayValue" in v:
        return s(5, b"".join(s(1, any_value(x)) for x in v["arrayValue"]["values"]))
    if "kvlistValue" in v:
        return s(6, b"".join(s(1, key_value(x)) for x in v["kvlistValue"]["values"]))
    if "bytesValue" in v:
        import base64
        return s(7, base64.b64decode(v["bytesValue"]))
    return b""


def key_value(kv):
    return s(1, kv["key"]) + s(2, any_value(kv["value"]))


def fixed64(n):
    return int(n).to_bytes(8, "little")


def encode_span(sp):
    out = s(1, bytes.fromhex(sp["traceId"])) + s(2, bytes.fromhex(sp["spanId"]))
    if "parentSpanId" in sp:
        out += s(4, bytes.fromhex(sp["parentSpanId"]))
    out += s(5, sp.get("name", ""))
    if "kind" in sp:
        out += field(6, 0, sp["kind"])
    if "startTimeUnixNano" in sp:
        out += field(7, 1, fixed64(sp["startTimeUnixNano"]))
    if "endTimeUnixNano" in sp:
        out += field(8, 1, fixed64(sp["endTimeUnixNano"]))
    for kv in sp.get("attributes", []):
        out += s(9, key_value(kv))
    for ev in sp.get("events", []):
        e = field(1, 1, fixed64(ev["timeUnixNano"])) + s(2, ev["name"])
        for kv in ev.get("attributes", []):
            e += s(3, key_value(kv))
        out += s(11, e)
    for ln in sp.get("links", []):
        l = s(1, bytes.fromhex(ln["traceId"])) + s(2, bytes.fromhex(ln["spanId"]))
        for kv in ln.get("attributes", []):
            l += s(4, key_value(kv))
        out += s(13, l)
    if "status" in sp:
        out += s(15, s(2, sp["status"].get("message", "")) + field(3, 0, sp["status"]["code"]))
    return out


def encode_request(req):
    out = b""
    for rs in req["resourceSpans"]:
        r = b""
        if "resource" in rs:
            r += s(1, b"".join(s(1, key_value(kv)) for kv in rs["resource"].get("attributes", [])))
        for ss in rs.get("scopeSpans", []):
            scope = ss.get("scope", {})
            sc = s(1, s(1, scope.get("name", "")) + s(2, scope.get("version", "")))
            for sp in ss.get("spans", []):
                sc += s(2, encode_span(sp))
            r += s(2, sc)
        out += s(1, r)
    return out


for req in (SPEC, bad):
    pb = encode_request(req)
    write("otlp_protobuf", pb)
    write("otlp_protobuf", pb[: len(pb) // 2])  # truncated
write("otlp_protobuf", b"")
write("otlp_protobuf", b"\xff\xff\xff")

# --- rules and features ------------------------------------------------------------------
rules = (ROOT / "config/rules.toml").read_text()
write("rule_set", rules)
write("rule_set", 'version = "v2"\non_rule_error = "decline"\n[[rules]]\nname = "r"\n'
                  'expression = \'value_or(features.card_last_country, "") == event.country\'\n'
                  'outcome = "review"\nreason = "r"\n')
write("rule_set", rules.replace("features.ip_count_5m > 20.0", "features.no_such_feature > 20.0")
      .replace("features.device_distinct_cards_1h >= 4.0", "features.device_distinct_cards_1h >= (4.0"))
write("rule_set", 'version = ""\non_rule_error = "approve"\n[[rules]]\nname = "x"\nexpression = "1"\n'
                  'score = 1.0\noutcome = "decline"\nreason = ""\n')
features = (ROOT / "config/features.toml").read_text()
write("feature_config", features)
for block in re.findall(r"```toml\n(.*?)```", (ROOT / "docs/features.md").read_text(), re.S):
    write("feature_config", block)

# --- api parameters ----------------------------------------------------------------------
for q in [
    "service=riskstream-ingest",
    "service=search-svc&operation=GET%20/a&limit=20",
    "service=s&tags=%7B%22http.status_code%22%3A%22500%22%7D&minDuration=1.2ms&maxDuration=1s",
    "service=s&tag=outcome:decline&tag=error:true&start=1700000000000000&end=1700000600000000",
    "service=s%27%20OR%20%271%27%3D%271&operation=x%27;%20DROP%20TABLE%20spans%20--",
    "trace_id=5B8EFFF798038103D269B633813FC60C&account_id=acc-1&from=2023-11-14T22:13:20Z&to=1700000000000",
    "service=s&minDuration=2s&maxDuration=1s&limit=0",
    "service=Z%C3%BCrich&minDuration=250%C2%B5s",
]:
    write("api_params", q)

# --- the worker's internal and control records ------------------------------------------
event = {k: v for k, v in FULL.items()}
records = [
    {"event": {"event": event, "group": 0, "src_partition": 1, "src_offset": 7,
               "watermark_ms": 1789999990000, "traceparent": "00-5b8efff798038103d269b633813fc60c-eee19b7ec3c1b174-01"}},
    {"marker": {"src_partition": 2, "watermark_ms": -9223372036854775808, "idle": True}},
]
for r in records:
    write("kafka_records", b"\x00" + json.dumps(r).encode())
results = [
    {"base": {"event": event, "groups": [0, 1, 2], "late": False, "lateness_ms": 0,
              "read_at_unix_us": 1789999990000000}},
    {"partial": {"event_id": FULL["event_id"], "group": 0, "values": [None, 1.5, "DE"],
                 "beyond_retention": True}},
]
for r in results:
    write("kafka_records", b"\x01" + json.dumps(r).encode())
for line in (ROOT / "config/lists/lists.csv").read_text().splitlines()[:6]:
    write("kafka_records", b"\x02" + line.encode())
write("kafka_records", b'\x02{"list":"block","entity":"card_id","value":"card-1","ttl":"1h"}')
write("kafka_records", b"\x03" + json.dumps({
    "event_id": FULL["event_id"], "trace_id": "5b8efff798038103d269b633813fc60c",
    "account_id": "acc-1", "event_time_ms": 1789999990000, "decided_at_ms": 1789999990100,
    "outcome": "decline", "score": 0.9,
    "reasons": [{"kind": "rule", "code": "card_testing", "detail": "d", "contribution": 0.5}],
    "features": {"card_count_10m": 3.0, "card_last_country": "DE", "account_avg_amount_24h": None},
    "models": [{"model": "lr", "version": "3", "role": "champion", "score": 0.4, "acted_on": True}],
    "rules_version": "2026-11-24.1", "late": False, "lateness_ms": 0,
    "processing_latency_us": 120}).encode())
