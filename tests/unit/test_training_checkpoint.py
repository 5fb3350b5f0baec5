"""Checkpoints: written atomically, read back with weights_only, random state restored."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

from training.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint, write_outputs
from training.exceptions import CheckpointError


def test_a_checkpoint_round_trips_and_resumes_the_random_streams(tmp_path: Path) -> None:
    # GIVEN a checkpoint with state dicts, plain values and the random state
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    random.seed(5)
    torch.manual_seed(5)
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 3,
             "best_val_loss": 0.25, "history": [{"epoch": 1, "val_loss": 0.5}], "rng": capture_rng()}
    save_checkpoint(tmp_path / "ck" / "last.pt", state)
    expected = (random.random(), torch.rand(3))
    # WHEN it is loaded (weights_only) and its random state restored
    loaded = load_checkpoint(tmp_path / "ck" / "last.pt")
    restore_rng(loaded["rng"])
    # THEN everything is back and the streams continue where they were
    assert loaded["epoch"] == 3 and loaded["history"] == state["history"]
    assert torch.equal(loaded["model"]["weight"], model.weight.detach())
    assert loaded["optimizer"]["state"][0]["exp_avg"].shape == (2, 3)
    assert random.random() == expected[0] and torch.equal(torch.rand(3), expected[1])
    assert [p.name for p in (tmp_path / "ck").iterdir()] == ["last.pt"]  # no temporary left behind


def test_a_checkpoint_holding_objects_is_refused_without_running_them(tmp_path: Path) -> None:
    # GIVEN a file that would call a function when unpickled
    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.getenv, ("HOME",))

    torch.save({"model": {}, "epoch": 1, "payload": Exploit()}, tmp_path / "last.pt")
    # WHEN / THEN
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "last.pt")


def test_missing_or_foreign_checkpoints_are_explained(tmp_path: Path) -> None:
    # GIVEN no checkpoint, and a torch file that is not a training checkpoint
    torch.save({"weight": torch.zeros(1)}, tmp_path / "other.pt")
    # WHEN / THEN
    with pytest.raises(CheckpointError, match="no checkpoint at .* --out must be shared storage"):
        load_checkpoint(tmp_path / "absent.pt")
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_outputs_are_the_model_the_metrics_and_one_class_per_line(tmp_path: Path) -> None:
    # GIVEN a state dict, metrics and class names
    # WHEN the outputs are written
    write_outputs(tmp_path / "out", {"w": torch.ones(2)}, {"val_loss": 0.1}, ("001.A", "002.B"))
    # THEN the three files exist with those contents
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "class_names.txt", "metrics.json", "model.safetensors"]
    assert (tmp_path / "out" / "class_names.txt").read_text() == "001.A\n002.B\n"
    assert '"val_loss": 0.1' in (tmp_path / "out" / "metrics.json").read_text()
