"""Reading weights safely: .pth (weights-only), SageMaker model.tar.gz, safetensors."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import pytest
import torch

from model_store.exceptions import SourceError, UnsafeWeightsError
from model_store.weights import read_state_dict, save_safetensors, sha256_file


class CreatesMarkerWhenUnpickled:
    """A pickle payload that runs a shell command on load, as an attacker's model.pth would."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def small_state_dict() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "conv1.weight": torch.randn(4, 3, 3, 3, generator=generator),
        "bn1.running_var": torch.rand(4, generator=generator),
        "bn1.num_batches_tracked": torch.tensor(7),
    }


def add_member(archive: tarfile.TarFile, name: str, data: bytes, kind: bytes = tarfile.REGTYPE) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.type = len(data), kind
    archive.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def tar_gz(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            add_member(archive, name, data)
    return path


def torch_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def assert_same_tensors(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        assert got[key].dtype == value.dtype and torch.equal(got[key], value), key


@pytest.mark.parametrize("suffix", [".pth", ".pt"])
def test_pth_state_dict_round_trips(tmp_path: Path, suffix: str) -> None:
    # GIVEN a state dict saved with torch.save
    expected = small_state_dict()
    path = tmp_path / f"model{suffix}"
    torch.save(expected, path)
    # WHEN it is read
    got = read_state_dict(path)
    # THEN the same tensors come back
    assert_same_tensors(got, expected)


@pytest.mark.parametrize("legacy_format", [False, True], ids=["zip", "raw-pickle"])
def test_malicious_pth_is_refused_and_nothing_runs(tmp_path: Path, legacy_format: bool) -> None:
    # GIVEN a .pth whose pickle would create a marker file when loaded
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pth"
    payload = {"fc.bias": [0.0, 1.0], "evil": CreatesMarkerWhenUnpickled(marker)}
    if legacy_format:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    else:
        torch.save(payload, path)
    # WHEN it is read
    with pytest.raises(UnsafeWeightsError) as caught:
        read_state_dict(path)
    # THEN it is refused, naming the call it would have made, and the payload never ran
    assert f"loading it would call {os.system.__module__}.system" in str(caught.value)
    assert "Nothing from it was run" in str(caught.value)
    assert not marker.exists()


def test_malicious_model_pth_inside_tar_gz_is_refused(tmp_path: Path) -> None:
    # GIVEN a SageMaker-style archive whose model.pth holds the malicious pickle
    marker = tmp_path / "pwned"
    archive = tar_gz(tmp_path / "model.tar.gz", {"model.pth": torch_bytes({"x": CreatesMarkerWhenUnpickled(marker)})})
    # WHEN / THEN it is refused and nothing ran
    with pytest.raises(UnsafeWeightsError, match="model.tar.gz:model.pth was refused"):
        read_state_dict(archive)
    assert not marker.exists()


def test_whole_pickled_module_is_refused(tmp_path: Path) -> None:
    # GIVEN torch.save(model) instead of torch.save(model.state_dict())
    path = tmp_path / "model.pth"
    torch.save(torch.nn.Linear(2, 2), path)
    # WHEN / THEN it is refused with the fix in the message
    with pytest.raises(UnsafeWeightsError, match=r"model\.state_dict\(\)"):
        read_state_dict(path)


def test_sagemaker_tar_gz_reads_only_model_pth(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN an archive with a path-traversal member and code beside ./model.pth, read from an empty cwd
    expected = small_state_dict()
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        add_member(tar, "../escape.txt", b"outside")
        add_member(tar, "code/inference.py", b"import os\n")
        add_member(tar, "./model.pth", torch_bytes(expected))
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    # WHEN it is read
    got = read_state_dict(archive)
    # THEN model.pth is loaded and nothing was extracted anywhere
    assert_same_tensors(got, expected)
    assert list(workdir.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tar.gz", "work"]


def test_tar_gz_without_model_pth_is_a_source_error(tmp_path: Path) -> None:
    # GIVEN an archive whose model.pth is nested, not at the top level
    archive = tar_gz(tmp_path / "model.tar.gz", {"output/model.pth": torch_bytes(small_state_dict())})
    # WHEN / THEN the error says what a SageMaker archive should hold
    with pytest.raises(SourceError, match="holds no model.pth at its top level"):
        read_state_dict(archive)


def test_tar_gz_member_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    # GIVEN an archive whose model.pth is larger than the limit
    archive = tar_gz(tmp_path / "model.tar.gz", {"model.pth": torch_bytes(small_state_dict())})
    # WHEN / THEN it is refused before being read
    with pytest.raises(SourceError, match="over the 100-byte limit"):
        read_state_dict(archive, max_member_bytes=100)


def test_tar_gz_model_pth_that_is_a_link_is_refused(tmp_path: Path) -> None:
    # GIVEN an archive where model.pth is a symlink to a file on the host
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("model.pth")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    # WHEN / THEN it is refused
    with pytest.raises(SourceError, match="not a regular file"):
        read_state_dict(archive)


def test_not_a_tar_is_a_source_error(tmp_path: Path) -> None:
    # GIVEN a file named .tar.gz that is not one
    path = tmp_path / "model.tar.gz"
    path.write_bytes(b"definitely not gzip")
    # WHEN / THEN
    with pytest.raises(SourceError, match="not a readable tar.gz archive"):
        read_state_dict(path)


def test_garbage_pth_is_a_source_error(tmp_path: Path) -> None:
    # GIVEN a .pth that is not a torch file at all
    path = tmp_path / "model.pth"
    path.write_bytes(b"hello, not a checkpoint")
    # WHEN / THEN it is a SourceError, not an unsafe-weights error
    with pytest.raises(SourceError, match="is not a PyTorch weights file"):
        read_state_dict(path)


def test_wrapped_and_ddp_prefixed_state_dict_is_unwrapped(tmp_path: Path) -> None:
    # GIVEN a training checkpoint {"state_dict": ..., "epoch": ...} saved from a DDP model
    expected = small_state_dict()
    path = tmp_path / "checkpoint.pth"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in expected.items()}}, path)
    # WHEN it is read
    got = read_state_dict(path)
    # THEN the plain keys come back
    assert_same_tensors(got, expected)


def test_non_tensor_entries_are_a_source_error(tmp_path: Path) -> None:
    # GIVEN a checkpoint without a state dict in it
    path = tmp_path / "checkpoint.pth"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    # WHEN / THEN the error names the entries that are not tensors
    with pytest.raises(SourceError, match=r"not tensors: \['epoch', 'lr'\]"):
        read_state_dict(path)


def test_safetensors_round_trip_and_sha256(tmp_path: Path) -> None:
    # GIVEN a state dict whose two entries share storage (a view), as some models have
    expected = small_state_dict()
    expected["alias.weight"] = expected["conv1.weight"].view(4, 27)
    path = tmp_path / "model.safetensors"
    # WHEN it is saved and read back
    save_safetensors(expected, path)
    got = read_state_dict(path)
    # THEN tensors are equal, no temporary file is left, and the digest is the file's sha256
    assert_same_tensors(got, expected)
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_unknown_extension_and_missing_file(tmp_path: Path) -> None:
    # GIVEN a .bin file and a path that does not exist
    other = tmp_path / "model.bin"
    other.write_bytes(b"x")
    # WHEN / THEN each is a SourceError that says what is accepted or missing
    with pytest.raises(SourceError, match="expected a .pth/.pt state dict"):
        read_state_dict(other)
    with pytest.raises(SourceError, match="does not exist"):
        read_state_dict(tmp_path / "absent.pth")
