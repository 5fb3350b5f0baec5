"""The demo's own store and model root: a demo version an older breedserve left there is made again.

`emulator.demo.prepare_model` is what `make demo`, `make serve` and `make bench` run first. No
ResNet-50 is built here: versions are a manifest and a few bytes per variant with the right
sha256, written through the store API, and `publish_demo` is replaced by a fake that publishes
the current variant formats and records that it was called.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import pytest

import model_store.demo
from benchmarks.exceptions import LatencyBenchmarkError
from benchmarks.latency_model import existing_model
from emulator.demo import DemoPaths, prepare_model
from emulator.exceptions import EmulatorError
from model_store.loader import read_local_manifest, versions_dir
from model_store.manifest import (
    MANIFEST_FILE,
    Architecture,
    Manifest,
    Preprocessing,
    WeightsFile,
    outdated_variants,
)
from model_store.store import manifest_key, open_store, read_manifest, version_key, write_alias
from model_store.sync import sync

NAME, VERSION, ALIAS = "dogbreeds", "demo-1", "live"
CURRENT = {"fp32": "safetensors", "int8": "onnx-int8", "fp32-graph": "onnx-fp32"}
OLDER = {"fp32": "safetensors", "int8": "safetensors-int8-x86", "fp32-graph": "torchscript"}
FILES = {("fp32", "safetensors"): "model.safetensors", ("int8", "onnx-int8"): "model-int8.onnx",
         ("fp32-graph", "onnx-fp32"): "model-fp32.onnx", ("int8", "safetensors-int8-x86"): "model-int8.safetensors",
         ("fp32-graph", "torchscript"): "model-graph.torchscript"}


def put_version(store_uri: str, formats: dict[str, str], *, refused: tuple[str, ...] = (),
                created_at: str = "2026-01-01T00:00:00Z") -> Manifest:
    """Publish a few bytes per variant in the given formats, as `NAME/VERSION` with alias `ALIAS`."""
    store = open_store(store_uri)
    weights = {}
    for variant, file_format in formats.items():
        data = f"{variant} as {file_format}, {created_at}".encode()
        file = FILES[variant, file_format]
        store.write_bytes(version_key(NAME, VERSION, file), data)
        weights[variant] = WeightsFile(file=file, format=file_format, sha256=hashlib.sha256(data).hexdigest(),
                                       size=len(data))
    metrics: dict[str, Any] = {"refused_variants": {v: f"{v} refused: slower" for v in refused}} if refused else {}
    manifest = Manifest(name=NAME, version=VERSION, arch=Architecture(depth=18), class_names=("a", "b"),
                        preprocess=Preprocessing.preset("resize224"), weights=weights, trained=False,
                        created_at=created_at, source="demo: test", metrics=metrics)
    store.write_bytes(manifest_key(NAME, VERSION), manifest.to_json().encode())
    write_alias(store, NAME, ALIAS, VERSION)
    return manifest


class FakePublish:
    """Stands in for `model_store.demo.publish_demo`: publishes today's formats, records each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, str | None]] = []

    def __call__(self, store_uri: str, name: str, version: str, alias: str | None = None, **_: Any) -> Manifest:
        self.calls.append((store_uri, name, version, alias))
        return put_version(store_uri, CURRENT, created_at="2026-11-22T08:00:00Z")


@pytest.fixture
def publish(monkeypatch: pytest.MonkeyPatch) -> FakePublish:
    fake = FakePublish()
    monkeypatch.setattr(model_store.demo, "publish_demo", fake)
    return fake


def demo_left_behind(workdir: Path, formats: dict[str, str], **kwargs: Any) -> DemoPaths:
    """A demo workdir as an earlier `make demo` leaves it: the version published and synced."""
    paths = DemoPaths(workdir)
    put_version(paths.store_uri, formats, **kwargs)
    sync(paths.store_uri, NAME, paths.model_root, alias=ALIAS, progress=False)
    return paths


def served_formats(paths: DemoPaths) -> dict[str, str]:
    """The variant formats of the version the model root's alias points at."""
    manifest = read_local_manifest(paths.model_root / NAME / ALIAS, name=NAME, version=VERSION)
    return {variant: entry.format for variant, entry in manifest.weights.items()}


def test_an_outdated_demo_version_is_republished_and_synced_again(
        tmp_path: Path, publish: FakePublish, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN a demo workdir whose int8 and fp32-graph an older breedserve made
    paths = demo_left_behind(tmp_path / "work", OLDER)
    # WHEN the demo prepares its model
    prepare_model(paths, NAME, VERSION, ALIAS)
    # THEN one line names each outdated variant and says it is republished
    err = capsys.readouterr().err
    outdated = [line for line in err.splitlines() if "is outdated" in line]
    assert len(outdated) == 1
    assert "int8 is safetensors-int8-x86, this breedserve serves onnx-int8" in outdated[0]
    assert "fp32-graph is torchscript, this breedserve serves onnx-fp32" in outdated[0]
    assert outdated[0].endswith("republishing it")
    # AND the demo was published again, once, into the demo's store with the demo's alias
    assert publish.calls == [(paths.store_uri, NAME, VERSION, ALIAS)]
    # AND the store holds only the new publish's files (the old ones were deleted, not left beside it)
    store = open_store(paths.store_uri)
    assert sorted(store.list_keys(f"{NAME}/{VERSION}/")) == [
        f"{NAME}/{VERSION}/{file}" for file in ("manifest.json", "model-fp32.onnx", "model-int8.onnx",
                                                 "model.safetensors")]
    # AND the model root serves the new publish, byte for byte the store's manifest
    assert served_formats(paths) == CURRENT
    local = versions_dir(paths.model_root, NAME) / VERSION / MANIFEST_FILE
    assert local.read_bytes() == read_manifest(store, NAME, VERSION)[1]


def test_a_current_demo_version_is_neither_republished_nor_downloaded_again(
        tmp_path: Path, publish: FakePublish, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN a demo workdir holding what this breedserve publishes
    paths = demo_left_behind(tmp_path / "work", CURRENT)
    synced = (versions_dir(paths.model_root, NAME) / VERSION / MANIFEST_FILE).stat()
    # WHEN the demo prepares its model
    prepare_model(paths, NAME, VERSION, ALIAS)
    # THEN nothing is published and the synced copy is the same file (sync kept it)
    assert publish.calls == []
    assert "outdated" not in capsys.readouterr().err
    again = (versions_dir(paths.model_root, NAME) / VERSION / MANIFEST_FILE).stat()
    assert (again.st_ino, again.st_mtime_ns) == (synced.st_ino, synced.st_mtime_ns)
    assert served_formats(paths) == CURRENT


@pytest.mark.parametrize(("refused", "republished"), [((), True), (("fp32-graph",), False)])
def test_a_missing_variant_is_outdated_unless_its_gate_refused_it(
        tmp_path: Path, publish: FakePublish, capsys: pytest.CaptureFixture[str],
        refused: tuple[str, ...], republished: bool) -> None:
    # GIVEN a demo version without fp32-graph, its refusal recorded or not
    formats = {v: f for v, f in CURRENT.items() if v != "fp32-graph"}
    paths = demo_left_behind(tmp_path / "work", formats, refused=refused)
    # WHEN the demo prepares its model
    prepare_model(paths, NAME, VERSION, ALIAS)
    # THEN an unexplained gap is republished, naming the variant; a refusal is the current verdict
    err = capsys.readouterr().err
    assert len(publish.calls) == int(republished)
    assert ("fp32-graph is missing" in err) is republished
    assert served_formats(paths) == (CURRENT if republished else formats)


def test_an_unreadable_demo_manifest_is_republished(
        tmp_path: Path, publish: FakePublish, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN a demo version whose manifest has a schema this breedserve does not read
    paths = DemoPaths(tmp_path / "work")
    put_version(paths.store_uri, CURRENT)
    store = open_store(paths.store_uri)
    store.write_bytes(manifest_key(NAME, VERSION), store.read_bytes(manifest_key(NAME, VERSION))
                      .replace(b'"schema_version": 1', b'"schema_version": 0'))
    # WHEN the demo prepares its model
    prepare_model(paths, NAME, VERSION, ALIAS)
    # THEN it says why and publishes again
    assert "cannot read its manifest" in capsys.readouterr().err
    assert len(publish.calls) == 1
    assert served_formats(paths) == CURRENT


def test_a_synced_copy_of_an_earlier_publish_is_replaced_without_publishing(
        tmp_path: Path, publish: FakePublish, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN a model root synced from an outdated publish (e.g. a run stopped after republishing, before syncing)
    paths = DemoPaths(tmp_path / "work")
    earlier = DemoPaths(tmp_path / "earlier")
    put_version(earlier.store_uri, OLDER)
    sync(earlier.store_uri, NAME, paths.model_root, alias=ALIAS, progress=False)
    # AND the demo store already holds the current publish
    put_version(paths.store_uri, CURRENT, created_at="2026-11-22T08:00:00Z")
    # WHEN the demo prepares its model
    prepare_model(paths, NAME, VERSION, ALIAS)
    # THEN it publishes nothing, but the model root now serves what the store holds
    assert publish.calls == []
    assert "is not the one in the demo store: removing its manifest, so that sync replaces it" in capsys.readouterr().err
    assert served_formats(paths) == CURRENT


def test_a_store_failure_is_one_emulator_error_naming_the_workdir(tmp_path: Path, publish: FakePublish) -> None:
    # GIVEN a demo version whose alias file is not JSON
    paths = DemoPaths(tmp_path / "work")
    put_version(paths.store_uri, CURRENT)
    (tmp_path / "work" / "store" / NAME / "aliases" / f"{ALIAS}.json").write_text("{")
    # WHEN / THEN preparing fails with an EmulatorError the CLI prints as one line
    with pytest.raises(EmulatorError, match=r"cannot prepare the demo model in .*work.*make clean"):
        prepare_model(paths, NAME, VERSION, ALIAS)


def test_outdated_variants_names_formats_unknown_and_missing_variants() -> None:
    # GIVEN a manifest with an old int8, an unknown variant and no fp32-graph
    manifest = unstored_manifest({"fp32": "safetensors", "int8": "safetensors-int8-x86", "int8-arm": "x"})
    # WHEN / THEN each is named with its reason; fp32-graph counts only where a publish would make it
    assert outdated_variants(manifest) == {
        "int8": "int8 is safetensors-int8-x86, this breedserve serves onnx-int8",
        "int8-arm": "int8-arm is not a variant this breedserve serves"}
    assert outdated_variants(manifest, expected=CURRENT)["fp32-graph"] == "fp32-graph is missing"


def unstored_manifest(formats: dict[str, str]) -> Manifest:
    """A manifest with `formats`, not stored anywhere."""
    weights = {v: WeightsFile(file=FILES.get((v, f), f"{v}.bin"), format=f, sha256="0" * 64, size=1)
               for v, f in formats.items()}
    return Manifest(name=NAME, version=VERSION, arch=Architecture(depth=18), class_names=("a", "b"),
                    preprocess=Preprocessing.preset("resize224"), weights=weights, trained=False)


def test_the_benchmark_leaves_out_variants_this_breedserve_refuses(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # GIVEN a user's model root whose int8 an older breedserve made, and a current fp32-graph
    store = DemoPaths(tmp_path / "store")
    put_version(store.store_uri, {**CURRENT, "int8": "safetensors-int8-x86"})
    root = tmp_path / "models"
    sync(store.store_uri, NAME, root, version=VERSION, progress=False)
    before = (versions_dir(root, NAME) / VERSION / MANIFEST_FILE).read_bytes()
    # WHEN the latency benchmark takes that version
    with caplog.at_level(logging.WARNING, logger="benchmarks.latency_model"):
        model = existing_model(root, NAME, VERSION)
    # THEN int8 is neither measured nor taken for the served variant, and one line says why
    assert model.variants == ("fp32", "fp32-graph")
    assert model.served_variant == "fp32-graph"
    assert model.describe()["outdated"] == {"int8": "int8 is safetensors-int8-x86, this breedserve serves onnx-int8"}
    [record] = [r for r in caplog.records if r.name == "benchmarks.latency_model"]
    assert "not measuring int8 (int8 is safetensors-int8-x86, this breedserve serves onnx-int8)" in record.message
    with pytest.raises(LatencyBenchmarkError, match="republish"):
        model.engine("int8")
    # AND the user's model root is left as it was
    assert (versions_dir(root, NAME) / VERSION / MANIFEST_FILE).read_bytes() == before
