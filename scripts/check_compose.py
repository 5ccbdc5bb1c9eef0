#!/usr/bin/env python3
"""Checks docker-compose.yml and what it references (run by scripts/check-compose, in its venv).

1. schema: docker-compose.yml against the Compose Specification's JSON schema, vendored as
   deploy/compose-spec.json (the copy check-jsonschema ships as vendor.compose-spec).
2. commands: every command of a riskstream service (built from this repository or its image)
   parsed by the binary's own parser, `riskstream check-args -- ARGS...`.
3. files: every host path of a bind mount (volumes), `configs`/`secrets` file, `env_file` and
   build context/Dockerfile exists in the repository; every Grafana dashboard provider's path is
   mounted into the grafana service and holds dashboards; every data source uid a dashboard
   names is provisioned.
4. scraping: every riskstream service that serves /metrics (ingest, worker, collector, api) is a
   target of deploy/prometheus/prometheus.yml on its --listen port.
5. metrics: every metric named in a dashboard query (deploy/grafana/dashboards/*.json) is one
   the services export: the names registered with prometheus_client in the Rust sources
   (`Registry::with_prefix("p")` + `.register("name", ...)`, with the suffixes of its type).
6. auth: every riskstream service's `RISKSTREAM__AUTH__TOKENS_FILE` (relative to the image's
   /app) lies in a directory mounted into it, and the mounted file is a tokens file the
   binary reads (`riskstream auth list --file ...`).

Exit status 1 with every problem listed, 0 when there are none.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
# Subcommands whose --listen serves GET /metrics.
METRICS_COMMANDS = {"ingest", "worker", "collector", "api"}

problems: list[str] = []


def rel(p: Path) -> str:
    """`p` relative to the repository when it is inside it."""
    try:
        return str(Path(p).resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


def problem(msg: str) -> None:
    problems.append(msg)


def load_compose(path: Path) -> dict:
    # PyYAML's safe loader applies `<<` merge keys (the x-riskstream anchor).
    return yaml.safe_load(path.read_text())


def is_riskstream(svc: dict) -> bool:
    return "build" in svc or str(svc.get("image", "")).startswith("riskstream")


def command_of(name: str, svc: dict) -> list[str] | None:
    cmd = svc.get("command")
    if isinstance(cmd, list):
        return [str(a) for a in cmd]
    problem(f"service {name}: command must be a list (exec form), got {cmd!r}")
    return None


# 1. schema ---------------------------------------------------------------------------------

def check_schema(compose: Path, schema: Path) -> None:
    exe = Path(sys.executable).parent / "check-jsonschema"
    r = subprocess.run(
        [str(exe), "--schemafile", str(schema), str(compose)],
        capture_output=True, text=True,
    )
    if r.returncode != 0:
        problem(f"{compose.name} does not match the Compose schema:\n{r.stdout}{r.stderr}")


# 2. commands -------------------------------------------------------------------------------

def check_commands(services: dict, binary: Path) -> None:
    n = 0
    for name, svc in services.items():
        if not is_riskstream(svc):
            continue
        args = command_of(name, svc)
        if args is None:
            continue
        r = subprocess.run([str(binary), "check-args", "--", *args], capture_output=True, text=True)
        n += 1
        if r.returncode != 0:
            problem(f"service {name}: `riskstream {' '.join(args)}` refused by the CLI: "
                    f"{r.stderr.strip()}")
    if n == 0:
        problem("no riskstream service found in the compose file")


# 3. files ----------------------------------------------------------------------------------

def host_path(source: str) -> Path | None:
    """A bind mount's host path (relative to the compose file), None for a named volume."""
    if source.startswith((".", "/", "~")):
        return (ROOT / source).resolve() if not source.startswith("/") else Path(source)
    return None


def mounts_of(svc: dict) -> list[tuple[Path, str]]:
    out = []
    for v in svc.get("volumes", []) or []:
        if isinstance(v, str):
            parts = v.split(":")
            if len(parts) >= 2:
                hp = host_path(parts[0])
                if hp is not None:
                    out.append((hp, parts[1]))
        elif isinstance(v, dict) and v.get("type", "bind") == "bind" and "source" in v:
            hp = host_path(v["source"])
            if hp is not None:
                out.append((hp, v.get("target", "")))
    return out


def check_files(doc: dict) -> None:
    services = doc.get("services", {})
    for name, svc in services.items():
        for hp, _ in mounts_of(svc):
            if not hp.exists():
                problem(f"service {name}: volume source {rel(hp)} does not exist")
        env_files = svc.get("env_file", [])
        for ef in [env_files] if isinstance(env_files, (str, dict)) else env_files:
            p = ef["path"] if isinstance(ef, dict) else ef
            if not (ROOT / p).exists():
                problem(f"service {name}: env_file {p} does not exist")
        build = svc.get("build")
        if build is not None:
            ctx = build if isinstance(build, str) else build.get("context", ".")
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            if not (ROOT / ctx).is_dir():
                problem(f"service {name}: build context {ctx} does not exist")
            elif not (ROOT / ctx / dockerfile).is_file():
                problem(f"service {name}: {Path(ctx) / dockerfile} does not exist")
    for kind in ("configs", "secrets"):
        for name, c in (doc.get(kind) or {}).items():
            if isinstance(c, dict) and "file" in c and not (ROOT / c["file"]).exists():
                problem(f"{kind} {name}: file {c['file']} does not exist")
    # Grafana: every provisioned dashboard directory is mounted and holds dashboards, and
    # every data source uid a dashboard names is provisioned.
    for name, svc in services.items():
        if not str(svc.get("image", "")).startswith("grafana/"):
            continue
        mounts = mounts_of(svc)
        uids = set()
        for hp, target in mounts:
            if target.startswith("/etc/grafana/provisioning/datasources/") and hp.is_file():
                for ds in (yaml.safe_load(hp.read_text()) or {}).get("datasources", []):
                    uids.add(ds.get("uid"))
        for hp, target in mounts:
            for d in [hp] if hp.is_file() else sorted(hp.glob("*.json")):
                if d.suffix != ".json":
                    continue
                used = set(re.findall(r'"uid":\s*"([^"]+)"', json.dumps(datasources_of(json.loads(d.read_text())))))
                if used - uids:
                    problem(f"{rel(d)}: data sources {sorted(used - uids)} are not provisioned "
                            f"(provisioned uids: {sorted(u for u in uids if u)})")
        for hp, target in mounts:
            if not target.startswith("/etc/grafana/provisioning/dashboards/") or not hp.is_file():
                continue
            for prov in (yaml.safe_load(hp.read_text()) or {}).get("providers", []):
                path = (prov.get("options") or {}).get("path", "")
                src = [h for h, t in mounts if path == t or path.startswith(t.rstrip("/") + "/")]
                if not src:
                    problem(f"service {name}: dashboard path {path} of {rel(hp)} is not mounted")
                    continue
                h, t = next((h, t) for h, t in mounts if h in src)
                d = h / Path(path).relative_to(t) if path != t else h
                if not list(d.glob("*.json")):
                    problem(f"service {name}: no dashboards in {rel(d)}")


def datasources_of(node) -> list:
    """Every `datasource` reference of a dashboard (panels and targets)."""
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "datasource" and isinstance(v, dict):
                out.append(v)
            else:
                out.extend(datasources_of(v))
    elif isinstance(node, list):
        for v in node:
            out.extend(datasources_of(v))
    return out


# 4. scraping -------------------------------------------------------------------------------

def listen_port(args: list[str]) -> str | None:
    if "--listen" in args:
        i = args.index("--listen")
        if i + 1 < len(args):
            return args[i + 1].rsplit(":", 1)[-1]
    return None


def check_scraping(services: dict, prometheus: Path) -> None:
    if not prometheus.is_file():
        problem(f"{rel(prometheus)} does not exist")
        return
    cfg = yaml.safe_load(prometheus.read_text()) or {}
    targets: set[str] = set()
    for job in cfg.get("scrape_configs", []):
        if job.get("metrics_path", "/metrics") != "/metrics":
            continue
        for sc in job.get("static_configs", []):
            targets.update(sc.get("targets", []))
        for dns in job.get("dns_sd_configs", []):
            for n in dns.get("names", []):
                targets.add(f"{n.removeprefix('tasks.')}:{dns.get('port')}")
    for name, svc in services.items():
        if not is_riskstream(svc) or not isinstance(svc.get("command"), list):
            continue
        args = [str(a) for a in svc["command"]]
        if not args or args[0] not in METRICS_COMMANDS:
            continue
        port = listen_port(args)
        if port is None:
            problem(f"service {name}: `{args[0]}` without --listen: its /metrics port is unknown")
        elif f"{name}:{port}" not in targets:
            problem(f"service {name}: {name}:{port}/metrics is not scraped by "
                    f"{rel(prometheus)} (targets: {sorted(targets)})")


# 5. metrics --------------------------------------------------------------------------------

SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "gauge": ("",),
    None: ("", "_total", "_bucket", "_sum", "_count", "_created"),
}
REGISTER = re.compile(r'\.register\(\s*"([A-Za-z_:][A-Za-z0-9_:]*)"\s*,\s*"(?:[^"\\]|\\.)*"\s*,\s*([A-Za-z_][A-Za-z0-9_]*)')
PREFIX = re.compile(r'Registry::with_prefix\(\s*"([A-Za-z0-9_:]*)"\s*\)|Registry::default\(\)')
LET = r'let\s+(?:mut\s+)?{var}\s*(?::([^=]+?))?=\s*([^;]+);'


def metric_kind(src: str, var: str) -> str | None:
    m = re.search(LET.format(var=re.escape(var)), src, re.S)
    if not m:
        return None
    text = (m.group(1) or "") + m.group(2)
    if "Histogram" in text or "histogram" in text:
        return "histogram"
    if "Counter" in text:
        return "counter"
    if "Gauge" in text:
        return "gauge"
    return None


def exported_metrics() -> dict[str, str]:
    """Exported sample names -> the Rust file registering them."""
    out: dict[str, str] = {}
    for rs in sorted(ROOT.glob("*/src/**/*.rs")):
        src = rs.read_text()
        if ".register(" not in src:
            continue
        prefixes = [(m.start(), m.group(1) or "") for m in PREFIX.finditer(src)]
        for m in REGISTER.finditer(src):
            before = [p for pos, p in prefixes if pos < m.start()]
            if not before:
                continue
            base = f"{before[-1]}_{m.group(1)}" if before[-1] else m.group(1)
            for sfx in SUFFIXES[metric_kind(src, m.group(2))]:
                out[base + sfx] = str(rel(rs))
    return out


PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                "offset", "and", "or", "unless", "inf", "nan", "atan2"}


def promql_metrics(expr: str) -> set[str]:
    """Metric names in a PromQL expression (not functions, labels, keywords or durations)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    names = set(re.findall(r'__name__\s*=\s*"([^"]*)"', expr))
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\$\{?\w+\}?", " ", e)
    for m in re.finditer(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)\b(\s*\()?", e):
        word, call = m.group(1), m.group(2)
        if call or word in PROMQL_WORDS or re.fullmatch(r"\d+[smhdwy]", word):
            continue
        names.add(word)
    return names


def dashboard_exprs(node) -> list[str]:
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "expr" and isinstance(v, str):
                out.append(v)
            else:
                out.extend(dashboard_exprs(v))
    elif isinstance(node, list):
        for v in node:
            out.extend(dashboard_exprs(v))
    return out


def check_metrics(dashboards: list[Path]) -> None:
    exported = exported_metrics()
    if not exported:
        problem("no metric registrations found in */src/**/*.rs")
        return
    if not dashboards:
        problem("no dashboards found")
    for d in dashboards:
        exprs = dashboard_exprs(json.loads(d.read_text()))
        if not exprs:
            problem(f"{rel(d)}: no queries")
        unknown = sorted({n for e in exprs for n in promql_metrics(e)} - exported.keys())
        if unknown:
            problem(f"{rel(d)}: metrics no service exports: {', '.join(unknown)}")


# 6. auth ----------------------------------------------------------------------------------

WORKDIR = "/app"  # the image's working directory (Dockerfile)


def env_of(svc: dict) -> dict:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
    return {k: str(v) for k, v in env.items()}


def check_auth(services: dict, binary: Path) -> None:
    for name, svc in services.items():
        if not is_riskstream(svc):
            continue
        path = env_of(svc).get("RISKSTREAM__AUTH__TOKENS_FILE", "")
        if not path:
            continue
        target = path if path.startswith("/") else f"{WORKDIR}/{path}"
        host = None
        for hp, t in mounts_of(svc):
            t = t.rstrip("/")
            if target == t:
                host = hp
            elif target.startswith(t + "/"):
                host = hp / target[len(t) + 1:]
        if host is None:
            problem(f"service {name}: tokens file {target} is not in a mounted directory")
            continue
        r = subprocess.run([str(binary), "auth", "list", "--file", str(host)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            problem(f"service {name}: tokens file {rel(host)}: {r.stderr.strip()}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compose", type=Path, default=ROOT / "docker-compose.yml")
    ap.add_argument("--schema", type=Path, default=ROOT / "deploy/compose-spec.json")
    ap.add_argument("--binary", type=Path, default=ROOT / "target/debug/riskstream")
    ap.add_argument("--prometheus", type=Path, default=ROOT / "deploy/prometheus/prometheus.yml")
    ap.add_argument("--dashboards", type=Path, default=ROOT / "deploy/grafana/dashboards")
    ap.add_argument("--list-metrics", action="store_true",
                    help="print the metric names found in the sources and exit")
    a = ap.parse_args()
    if a.list_metrics:
        for name, src in sorted(exported_metrics().items()):
            print(f"{name}\t{src}")
        return 0
    doc = load_compose(a.compose)
    services = doc.get("services") or {}
    check_schema(a.compose, a.schema)
    check_commands(services, a.binary)
    check_files(doc)
    check_scraping(services, a.prometheus)
    check_metrics(sorted(a.dashboards.glob("*.json")))
    check_auth(services, a.binary)
    for p in problems:
        print(f"check-compose: {p}", file=sys.stderr)
    if problems:
        return 1
    print(f"{rel(a.compose)}: schema, commands, files, scrape targets, "
          f"dashboard metrics and tokens files ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
