"""One process or many: torchrun's variables, devices, the global batch, random search trials."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from training.distributed import Context, all_reduce_sums, choose_device, per_process_batch, read_environment
from training.exceptions import ConfigError, DistributedError
from training.loop import use_amp
from training.search import format_table, sample_trials


def test_no_torchrun_variables_means_one_process() -> None:
    # GIVEN / WHEN / THEN
    assert read_environment({}) == (0, 1, 0, 1)
    assert read_environment({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}) == (
        3, 4, 1, 2)
    with pytest.raises(DistributedError, match="RANK=4 WORLD_SIZE=4"):
        read_environment({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(DistributedError, match="not integers"):
        read_environment({"WORLD_SIZE": "two"})


def test_devices_and_mixed_precision_follow_the_hardware() -> None:
    # GIVEN the CPU
    cpu = choose_device("cpu")
    # WHEN / THEN amp is off on CPU unless forced, and forcing it is refused
    assert cpu.type == "cpu" and not use_amp("auto", cpu) and not use_amp("off", cpu)
    with pytest.raises(ConfigError, match="--amp on needs a CUDA GPU"):
        use_amp("on", cpu)
    assert use_amp("auto", torch.device("cuda", 0))
    if not torch.cuda.is_available():
        assert choose_device("auto").type == "cpu"
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            choose_device("cuda")


def test_the_global_batch_is_split_evenly() -> None:
    # GIVEN / WHEN / THEN
    assert per_process_batch(64, 1) == 64 and per_process_batch(64, 4) == 16
    with pytest.raises(ConfigError, match="divide evenly among 3"):
        per_process_batch(64, 3)
    with pytest.raises(ConfigError, match="positive"):
        per_process_batch(0, 1)


def test_sums_of_one_process_are_its_own() -> None:
    # GIVEN a lone process
    # WHEN its sums are reduced
    # THEN they come back unchanged, as floats
    assert all_reduce_sums([1.5, 3, 7], Context()) == [1.5, 3.0, 7.0]


def test_search_trials_are_reproducible_spread_and_fit_the_processes() -> None:
    # GIVEN a seed, a base learning rate and batch size, and 4 processes
    trials = sample_trials(20, 1e-3, 32, seed=7, world_size=4)
    # WHEN drawn again with the same seed
    again = sample_trials(20, 1e-3, 32, seed=7, world_size=4)
    # THEN every process would pick the same trials, within the documented ranges
    assert trials == again and [t.number for t in trials] == list(range(1, 21))
    assert all(1e-4 <= t.lr <= 1e-2 for t in trials) and len({t.lr for t in trials}) == 20
    assert {t.batch_size for t in trials} <= {16, 32, 64} and len({t.batch_size for t in trials}) > 1
    assert {t.batch_size for t in sample_trials(10, 1e-3, 4, seed=0, world_size=4)} == {4, 8}
    with pytest.raises(ConfigError):
        sample_trials(0, 1e-3, 32, seed=0)


def test_the_results_table_lists_the_best_trial_first() -> None:
    # GIVEN two trial results, the worse one first, one without a test split
    rows: list[dict[str, Any]] = [{"trial": 1, "lr": 0.01, "batch_size": 16, "epochs_completed": 2, "val_loss": 0.9,
             "val_accuracy": 0.5, "test_accuracy": None, "train_seconds": 3.0},
            {"trial": 2, "lr": 0.001, "batch_size": 32, "epochs_completed": 2, "val_loss": 0.2,
             "val_accuracy": 0.9, "test_accuracy": 0.875, "train_seconds": 4.25}]
    # WHEN formatted
    lines = format_table(rows).splitlines()
    # THEN a header, then trial 2, then trial 1, in aligned columns
    assert lines[0].split() == ["trial", "lr", "batch", "epochs", "val_loss", "val_acc", "test_acc", "seconds"]
    assert lines[1].split() == ["2", "0.001", "32", "2", "0.2000", "0.900", "0.875", "4.2"]
    assert lines[2].split()[0] == "1" and lines[2].split()[6] == "-"
    assert len({len(line) for line in lines}) == 1
