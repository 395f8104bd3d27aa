"""Which checkpoint file manager the stream asks Spark for."""

from __future__ import annotations

import pytest

from imagetag.settings import Settings
from streaming.job import local_checkpoint_manager


@pytest.mark.parametrize(
    ("checkpoints", "archive", "local"),
    [
        ("/var/lib/imagetag/checkpoints", "/var/lib/imagetag/archive", True),
        ("file:///var/lib/imagetag/checkpoints", "file:/var/lib/imagetag/archive", True),
        ("hdfs://nn:8020/imagetag/checkpoints", "/var/lib/imagetag/archive", False),
        ("/var/lib/imagetag/checkpoints", "s3a://bucket/archive", False),
    ],
)
def test_local_checkpoints_use_the_file_system_manager(
    checkpoints: str, archive: str, local: bool
) -> None:
    settings = Settings.model_validate({"checkpoint_dir": checkpoints, "archive_dir": archive})
    manager = local_checkpoint_manager(settings)
    if local:
        assert manager is not None and manager.endswith(".FileSystemBasedCheckpointFileManager")
    else:
        assert manager is None
