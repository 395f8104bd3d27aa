"""The README, the settings defaults and docker-compose.yml agree on ports and names."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from imagetag.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


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
