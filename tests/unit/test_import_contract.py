"""The import contract in pyproject.toml names every module of imagetag/ exactly once."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _contracts() -> dict[str, dict]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {contract["type"]: contract for contract in config["contracts"]}


def _layer_modules(layer: str) -> list[str]:
    separator = "|" if "|" in layer else ":"
    return [name.strip() for name in layer.split(separator)]


def test_every_imagetag_module_is_in_one_layer() -> None:
    layers = [_layer_modules(layer) for layer in _contracts()["layers"]["layers"]]
    named = [name for layer in layers for name in layer]
    assert len(named) == len(set(named))
    package = ROOT / "imagetag"
    modules = {
        f"imagetag.{path.stem if path.is_file() else path.name}"
        for path in package.iterdir()
        if (path.suffix == ".py" and path.stem != "__init__")
        or (path.is_dir() and (path / "__init__.py").exists())
    }
    assert modules == {name for name in named if name.startswith("imagetag.")}


def test_the_core_layer_is_what_the_forbidden_contract_keeps_pure() -> None:
    contracts = _contracts()
    core = _layer_modules(contracts["layers"]["layers"][-1])
    assert sorted(core) == sorted(contracts["forbidden"]["source_modules"])
