"""The README, the settings defaults and docker-compose.yml agree on ports and names; the
monitoring in deploy/ (Prometheus, its alerts, the Grafana dashboard) queries only metrics the
jobs serve (imagetag.metrics) and scrapes them where they serve them."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from imagetag.metrics import BackfillMetrics, JobMetrics, StreamMetrics, names
from imagetag.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
RULES = DEPLOY / "prometheus" / "rules"
GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "imagetag.json"
# Prometheus job -> (compose service, what it serves)
SCRAPE_JOBS: dict[str, tuple[str, type[JobMetrics]]] = {
    "imagetag-stream": ("stream", StreamMetrics),
    "imagetag-backfill": ("backfill", BackfillMetrics),
}
METRIC = re.compile(r"\bimagetag_[A-Za-z0-9_:]*")
JOB_LABEL = re.compile(r"\bjob\s*=~?\s*\"([^\"]*)\"")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def defaults() -> Settings:
    return Settings.model_validate({})


def _published(service: dict) -> set[int]:
    return {int(str(p).split(":")[0]) for p in service.get("ports", [])}


def test_compose_ports_match_settings_defaults(compose: dict, defaults: Settings) -> None:
    services = compose["services"]
    assert defaults.kafka_port() in _published(services["kafka"])
    assert defaults.solr_port() in _published(services["solr"])
    env = services["kafka"]["environment"]
    assert f":{defaults.kafka_port()}" in env["KAFKA_LISTENERS"]


def test_compose_job_env_points_at_compose_services_with_default_ports(
    compose: dict, defaults: Settings
) -> None:
    env = compose["services"]["stream"]["environment"]
    assert env["IMAGETAG_KAFKA__BOOTSTRAP_SERVERS"] == f"kafka:{defaults.kafka_port()}"
    assert env["IMAGETAG_SOLR__URL"] == f"http://solr:{defaults.solr_port()}/solr"
    # Every IMAGETAG_ variable in the compose file is a real setting.
    for key in env:
        top = key.removeprefix("IMAGETAG_").split("__")[0].lower()
        assert top in Settings.model_fields, key


def test_readme_and_compose_name_the_default_topics_and_ports(defaults: Settings) -> None:
    readme = (ROOT / "README.md").read_text()
    compose_text = (ROOT / "docker-compose.yml").read_text()
    for name in (
        defaults.kafka.topic_images,
        defaults.kafka.topic_dlq,
        defaults.kafka.topic_review,
    ):
        assert f"`{name}`" in readme
        assert name in compose_text
    assert str(defaults.kafka_port()) in readme and str(defaults.solr_port()) in readme
    assert f"alias `{defaults.solr.collection}`" in readme


def test_readme_starts_with_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```")[1]
    assert "make demo" in first_block and "make test" in first_block


def test_compose_file_is_valid() -> None:
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip(
            "docker-compose (Debian package) not installed; `make setup` installs it as root"
        )
    result = subprocess.run(
        [tool, "-f", str(ROOT / "docker-compose.yml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr


def test_compose_runs_spark_and_the_stream_from_the_one_project_image(compose: dict) -> None:
    """Executors need the driver's Python (OpenCV, pandas, pyarrow): a stock Spark image has
    none of them, so the master, the worker and the stream all run the project's image."""
    services = compose["services"]
    for name in ("spark-master", "spark-worker", "stream"):
        assert services[name]["image"] == "imagetag:latest", name
        assert services[name]["build"] == ".", name
    assert "imagetag submit" in " ".join(services["stream"]["command"])
    assert "spark.driver.host" in services["stream"]["environment"]["IMAGETAG_SPARK__CONF"]


def test_compose_solr_starts_with_the_secured_stacks_model(compose: dict) -> None:
    """security.json reaches ZooKeeper before Solr starts; the jobs run as their own users."""
    services = compose["services"]
    assert "solr-security" in services["solr"]["depends_on"]
    assert services["solr-security"]["command"][:3] == ["imagetag", "stack", "solr-security"]
    assert "credentials admin" in " ".join(services["init"]["command"])
    assert "credentials stream" in " ".join(services["stream"]["command"])


# -- monitoring: docker-compose's prometheus and grafana, deploy/ ---------------------------


def _container_ports(service: dict) -> set[int]:
    """Container ports of ``ports`` (``[ip:]host:container``) and ``expose``."""
    published = {int(str(p).split(":")[-1]) for p in service.get("ports", [])}
    return published | {int(p) for p in service.get("expose", [])}


def _mounts(service: dict) -> dict[str, tuple[Path, str]]:
    """Bind mounts of the repository's files: container path -> (host path, mode)."""
    out = {}
    for volume in service.get("volumes", []):
        source, target, *mode = str(volume).split(":")
        if source.startswith("./"):
            out[target] = (ROOT / source, mode[0] if mode else "rw")
    return out


def _scrape_configs() -> dict[str, dict]:
    config = yaml.safe_load(PROMETHEUS.read_text())
    return {job["job_name"]: job for job in config["scrape_configs"]}


def _rules() -> list[dict]:
    files = sorted(RULES.glob("*.yml"))
    assert files, RULES
    return [
        rule
        for path in files
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def _panels(panels: list[dict]) -> Iterator[dict]:
    """Every panel, with those inside (collapsed) rows; rows themselves excluded."""
    for panel in panels:
        if panel.get("type") == "row":
            yield from _panels(panel.get("panels", []))
        else:
            yield panel


def _expressions() -> list[tuple[str, str]]:
    """(where, PromQL) of every alert or recording rule and every dashboard query."""
    exprs = [(f"rule {r.get('alert') or r.get('record')}", str(r["expr"])) for r in _rules()]
    for panel in _panels(_dashboard()["panels"]):
        exprs += [(f"panel {panel['title']!r}", t["expr"]) for t in panel.get("targets", [])]
    return exprs


def test_compose_runs_prometheus_and_grafana_pinned_with_the_repositorys_files(
    compose: dict,
) -> None:
    services = compose["services"]
    prometheus, grafana = services["prometheus"], services["grafana"]
    for service, image in ((prometheus, "prom/prometheus:v3."), (grafana, "grafana/grafana:12.")):
        assert service["image"].startswith(image), service["image"]
        assert re.fullmatch(r"v?\d+\.\d+\.\d+", service["image"].split(":")[1])
    assert 9090 in _container_ports(prometheus) and 3000 in _container_ports(grafana)
    assert _mounts(prometheus)["/etc/prometheus"] == (DEPLOY / "prometheus", "ro")
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    mounts = _mounts(grafana)
    assert mounts == {
        "/etc/grafana/provisioning/datasources": (
            GRAFANA / "provisioning" / "datasources",
            "ro",
        ),
        "/etc/grafana/provisioning/dashboards": (GRAFANA / "provisioning" / "dashboards", "ro"),
        "/etc/grafana/dashboards": (DASHBOARD.parent, "ro"),
    }
    for host_path, _ in [*mounts.values(), *_mounts(prometheus).values()]:
        assert host_path.is_dir(), host_path


def test_compose_grafana_admin_password_is_generated_not_written_in_the_file(
    compose: dict,
) -> None:
    grafana = compose["services"]["grafana"]
    env = grafana["environment"]
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env
    secret = env["GF_SECURITY_ADMIN_PASSWORD__FILE"]
    script = " ".join(grafana["entrypoint"])
    # made on first start (not over an existing one), then the image's own entrypoint
    assert "/dev/urandom" in script and "umask 077" in script and "exec /run.sh" in script
    data_volume = next(v for v in grafana["volumes"] if str(v).endswith(":/var/lib/grafana"))
    assert secret.startswith("/var/lib/grafana/")
    assert str(data_volume).split(":")[0] in compose["volumes"]
    # no password of any kind in the file: Grafana reads them from files (its __FILE variables)
    assert not [key for key in env if "PASSWORD" in key and not key.endswith("__FILE")]


def test_compose_jobs_serve_metrics_to_the_compose_network(
    compose: dict, defaults: Settings
) -> None:
    """The metrics endpoint listens on loopback by default: in a container it has to listen on
    every interface for the prometheus service to reach it."""
    services = compose["services"]
    ports = {"stream": defaults.metrics.stream_port, "backfill": defaults.metrics.backfill_port}
    assert defaults.metrics.host == "127.0.0.1"
    for name, port in ports.items():
        service = services[name]
        assert service["environment"]["IMAGETAG_METRICS__HOST"] == "0.0.0.0", name
        assert port in _container_ports(service), name
        assert service.get("hostname") == name
    assert services["backfill"]["image"] == "imagetag:latest"
    assert "credentials backfill" in " ".join(services["backfill"]["entrypoint"])
    assert "spark.driver.host" in services["backfill"]["environment"]["IMAGETAG_SPARK__CONF"]
    # Every IMAGETAG_ variable of every service is a real setting.
    for name, service in services.items():
        for key in service.get("environment") or {}:
            if key.startswith("IMAGETAG_"):
                top = key.removeprefix("IMAGETAG_").split("__")[0].lower()
                assert top in Settings.model_fields, (name, key)


def test_prometheus_scrapes_the_compose_jobs_on_the_settings_default_ports(
    compose: dict, defaults: Settings
) -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    assert config["global"]["scrape_interval"] == "15s"
    jobs = _scrape_configs()
    assert set(jobs) == set(SCRAPE_JOBS)
    ports = {
        "imagetag-stream": defaults.metrics.stream_port,
        "imagetag-backfill": defaults.metrics.backfill_port,
    }
    for job_name, job in jobs.items():
        service, _ = SCRAPE_JOBS[job_name]
        assert service in compose["services"], service
        targets = [
            tuple(t.rsplit(":", 1))
            for static in job.get("static_configs", [])
            for t in static["targets"]
        ]
        targets += [
            (name, str(dns["port"]))
            for dns in job.get("dns_sd_configs", [])
            for name in dns["names"]
        ]
        assert targets == [(service, str(ports[job_name]))], job_name
        assert job.get("metrics_path", "/metrics") == "/metrics"


def test_prometheus_rules_are_well_formed() -> None:
    config = yaml.safe_load(PROMETHEUS.read_text())
    assert config["rule_files"] == ["rules/*.yml"]  # relative to prometheus.yml
    rules = _rules()
    alerts = [r["alert"] for r in rules if "alert" in r]
    assert alerts and len(set(alerts)) == len(alerts)
    for rule in rules:
        assert set(rule) <= {"alert", "record", "expr", "for", "labels", "annotations"}, rule
        assert ("alert" in rule) != ("record" in rule), rule
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"]), rule
        if "alert" in rule:
            assert rule["labels"]["severity"] in ("warning", "critical"), rule
            assert rule["annotations"]["summary"], rule


def test_dashboard_and_rules_query_only_metrics_the_jobs_serve() -> None:
    """Every ``imagetag_...`` name in a PromQL expression is a sample the job of its prefix
    serves (imagetag.metrics.names), and every ``job="..."`` is a scrape job."""
    served = {f"imagetag_{cls.job}_": names(cls) for _, cls in SCRAPE_JOBS.values()}
    seen: set[str] = set()
    for where, expr in _expressions():
        for metric in METRIC.findall(expr):
            prefix = next((p for p in served if metric.startswith(p)), None)
            assert prefix is not None, f"{where}: {metric} belongs to no job"
            assert metric in served[prefix], f"{where}: {metric} is not served by its job"
            seen.add(metric)
        for job in JOB_LABEL.findall(expr):
            assert job in SCRAPE_JOBS, f"{where}: job={job!r}"
    # the parsing found something of each job
    assert all(any(m.startswith(p) for m in seen) for p in served), seen


def test_promql_expressions_are_balanced() -> None:
    """A cheap syntax check where promtool is not installed: brackets balance, quotes close."""
    pairs = {")": "(", "]": "[", "}": "{"}
    for where, expr in _expressions():
        stack: list[str] = []
        for ch in re.sub(r'"[^"]*"', '""', expr):
            if ch in "([{":
                stack.append(ch)
            elif ch in pairs:
                assert stack and stack.pop() == pairs[ch], f"{where}: {expr}"
        assert not stack and expr.count('"') % 2 == 0, f"{where}: {expr}"


def test_dashboard_is_valid_and_every_panel_queries_prometheus() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "imagetag"
    assert dashboard["schemaVersion"] >= 39
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["datasource"]["current"]["value"] == "prometheus"
    panels = list(_panels(dashboard["panels"]))
    assert len(panels) >= 10
    rows = [p for p in dashboard["panels"] if p.get("type") == "row"]
    ids = [p["id"] for p in [*rows, *panels]]
    assert len(set(ids)) == len(ids), ids
    for panel in panels:
        title = panel.get("title")
        assert panel["datasource"]["type"] == "prometheus", title
        assert panel["datasource"]["uid"] in ("${datasource}", "prometheus"), title
        assert panel["targets"], title
        refs = [t["refId"] for t in panel["targets"]]
        assert len(set(refs)) == len(refs), title
        for target in panel["targets"]:
            assert target["expr"].strip(), title
            assert target.get("datasource", panel["datasource"]) == panel["datasource"], title
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, title


def test_dashboard_covers_the_stream_and_the_backfill() -> None:
    exprs = " ".join(expr for _, expr in _expressions())
    for wanted in (
        "imagetag_stream_records_total",
        "imagetag_stream_dead_letters_total",
        "imagetag_stream_batch_duration_seconds_bucket",
        "imagetag_stream_phase_duration_seconds_bucket",
        "imagetag_stream_produce_to_tagged_seconds_bucket",
        "imagetag_stream_input_lag_records",
        "imagetag_stream_solr_retries_total",
        "imagetag_stream_solr_outage_seconds_total",
        "imagetag_stream_query_restarts_total",
        "imagetag_stream_last_batch_timestamp_seconds",
        "imagetag_stream_model_info",
        "imagetag_backfill_records_total",
        "imagetag_backfill_done_splits",
        "imagetag_backfill_planned_splits",
    ):
        assert wanted in exprs, wanted


def test_grafana_provisions_the_compose_prometheus_and_the_dashboard_folder(
    compose: dict,
) -> None:
    datasources = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"]
    (prometheus,) = datasources
    assert prometheus["type"] == "prometheus" and prometheus["uid"] == "prometheus"
    assert prometheus["url"] == "http://prometheus:9090"
    assert 9090 in _container_ports(compose["services"]["prometheus"])
    scrape = yaml.safe_load(PROMETHEUS.read_text())["global"]["scrape_interval"]
    assert prometheus["jsonData"]["timeInterval"] == scrape
    (provider,) = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "imagetag.yml").read_text()
    )["providers"]
    folder = provider["options"]["path"]
    assert _mounts(compose["services"]["grafana"])[folder][0] == DASHBOARD.parent
    home = compose["services"]["grafana"]["environment"][
        "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"
    ]
    assert home == f"{folder}/{DASHBOARD.name}"


def test_promtool_accepts_the_config_and_the_rules_and_their_tests_pass() -> None:
    """The real parser and the alerts' unit tests (deploy/prometheus/tests), where promtool is
    installed; the tests above check what they can without it."""
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool (Prometheus) not installed")
    for args in (
        ["check", "config", str(PROMETHEUS)],
        ["check", "rules", *map(str, sorted(RULES.glob("*.yml")))],
        ["test", "rules", *map(str, sorted((DEPLOY / "prometheus" / "tests").glob("*.yml")))],
    ):
        result = subprocess.run([tool, *args], capture_output=True, text=True, cwd=ROOT)
        assert result.returncode == 0, result.stdout + result.stderr
