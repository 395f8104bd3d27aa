from __future__ import annotations

from pathlib import Path

import pytest

from imagetag.errors import ConfigError
from imagetag.settings import Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("IMAGETAG_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no stray imagetag.yaml


def test_defaults_are_the_services_standard_ports() -> None:
    settings = Settings.load()
    assert settings.kafka_port() == 9092
    assert settings.solr_port() == 8983
    assert (settings.kafka.topic_images, settings.kafka.topic_dlq, settings.kafka.topic_review) == (
        "images",
        "images.dlq",
        "images.review",
    )
    assert settings.vote_threshold == pytest.approx(0.40)


def test_env_overrides_yaml_which_overrides_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "imagetag.yaml").write_text(
        "kafka:\n  bootstrap_servers: broker-a:9092\n  topic_images: from-yaml\n"
        "vote_threshold: 0.5\n"
    )
    monkeypatch.setenv("IMAGETAG_KAFKA__BOOTSTRAP_SERVERS", "broker-b:9093")
    settings = Settings.load()
    assert settings.kafka.bootstrap_servers == "broker-b:9093"
    assert settings.kafka.topic_images == "from-yaml"
    assert settings.vote_threshold == 0.5


@pytest.mark.parametrize(
    "env",
    [{"IMAGETAG_KAFKA_BOOTSTRAP": "x"}, {"IMAGETAG_KAFKA__BOOTSTRAP": "x"}],
)
def test_unknown_env_keys_are_rejected(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=r"(?i)bootstrap"):
        Settings.load()


def test_unknown_yaml_keys_are_rejected(tmp_path: Path) -> None:
    (tmp_path / "imagetag.yaml").write_text("solr:\n  urll: http://x\n")
    with pytest.raises(ConfigError, match=r"solr\.urll"):
        Settings.load()


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        Settings.load(tmp_path / "nope.yaml")


def test_frozen_and_secrets_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "IMAGETAG_KAFKA__CLIENT", '{"security.protocol": "SASL_SSL", "sasl.password": "hunter2"}'
    )
    settings = Settings.load()
    with pytest.raises(Exception, match="frozen"):
        settings.vote_threshold = 0.9
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings.public_dict())
    assert settings.kafka.client_config()["sasl.password"] == "hunter2"


def test_bad_value_names_the_key() -> None:
    with pytest.raises(ConfigError, match="vote_threshold"):
        Settings.load(vote_threshold=1.5)


def test_derive_changes_only_given_keys() -> None:
    settings = Settings.load()
    derived = settings.derive(kafka={"topic_images": "t1"}, vote_threshold=0.6)
    assert derived.kafka.topic_images == "t1"
    assert derived.kafka.bootstrap_servers == settings.kafka.bootstrap_servers
    assert derived.vote_threshold == 0.6
    assert settings.kafka.topic_images == "images"


def test_child_env_loads_back_the_same_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings.load().derive(
        kafka={"topic_images": "x.images", "client": {"sasl.password": "s3cret"}},
        solr={"username": "indexer", "password": "s0lr"},
        spark={"trigger_seconds": 2.5, "conf": {"spark.ui.enabled": "false"}},
        model_store="/tmp/models",
        vote_threshold=0.5,
    )
    env = settings.child_env()
    assert env["IMAGETAG_KAFKA__TOPIC_IMAGES"] == "x.images"
    for key, value in env.items():  # the autouse fixture removed the parent's IMAGETAG_*
        if key.startswith("IMAGETAG_"):
            monkeypatch.setenv(key, value)
    assert Settings.load() == settings


def test_settings_reach_executors_with_their_secrets_and_nothing_prints_them() -> None:
    settings = Settings.load().derive(
        kafka={"client": {"sasl.username": "stream", "sasl.password": "k-s3cret"}},
        solr={"username": "indexer", "password": "s-s3cret"},
    )
    shipped = settings.for_executors()
    rebuilt = Settings.from_executors(shipped)
    assert rebuilt == settings
    assert rebuilt.kafka.client_config()["sasl.password"] == "k-s3cret"
    assert rebuilt.solr.password is not None
    assert rebuilt.solr.password.get_secret_value() == "s-s3cret"
    for shown in (
        repr(settings),
        str(settings),
        settings.model_dump_json(),
        str(settings.public_dict()),
    ):
        assert "k-s3cret" not in shown and "s-s3cret" not in shown
