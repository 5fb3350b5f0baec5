"""The epoch loop's decisions: best weights by validation loss, early stopping, exact summed metrics."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from model_store.manifest import Preprocessing
from training import loop
from training.data import discover
from training.distributed import Context
from training.loop import TrainConfig, evaluate, fit
from training.model import parse_architecture
from training.synthetic import make_dataset


def test_evaluation_sums_loss_and_accuracy_over_every_image() -> None:
    # GIVEN a model whose logits are its input, and 5 images in batches of 2
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1, 1, 0])
    loader = DataLoader(TensorDataset(logits, labels), batch_size=2)
    # WHEN it is evaluated
    loss, accuracy = evaluate(nn.Identity(), loader, Context(), amp=False)
    # THEN the loss is the mean over images (not over batches) and 4 of 5 are right (a tie goes to class 0)
    expected = nn.functional.cross_entropy(logits, labels).item()
    assert loss == pytest.approx(expected) and accuracy == pytest.approx(4 / 5)


def test_training_keeps_the_best_epoch_and_stops_when_patience_runs_out(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN validation losses that improve until epoch 2 and then worsen, and patience 2
    make_dataset(tmp_path / "data", classes=2, train_per_class=2, eval_per_class=1, size=16)
    tree = discover(tmp_path / "data")
    val_losses: Iterator[float] = iter([1.0, 0.8, 0.9, 0.95])  # then 0.3: the test split

    def fake_epoch(model: nn.Module, *args: Any) -> float:
        with torch.no_grad():  # stamp the weights with how many epochs they have seen
            model.get_parameter("fc.bias").add_(1.0)
        return 0.5

    def fake_evaluate(model: nn.Module, loader: DataLoader, ctx: Context, amp: bool) -> tuple[float, float]:
        return next(val_losses, 0.3), 0.5

    monkeypatch.setattr(loop, "_train_epoch", fake_epoch)
    monkeypatch.setattr(loop, "evaluate", fake_evaluate)
    config = TrainConfig(arch=parse_architecture("resnet18"), out=tmp_path / "out", epochs=6, patience=2,
                         batch_size=2, preprocess=Preprocessing(resize_mode="exact", size=(16, 16)))
    lines: list[str] = []
    # WHEN it trains
    result = fit(config, tree, Context(), lines.append)
    # THEN it stopped after epoch 4 and kept epoch 2's weights
    metrics = result.metrics
    assert (metrics["epochs_completed"], metrics["best_epoch"], metrics["stopped_early"]) == (4, 2, True)
    assert metrics["val_loss"] == 0.8 and metrics["test_loss"] == 0.3
    bias_start = load_file(str(tmp_path / "out" / "model.safetensors"))["fc.bias"] - 2.0
    last = torch.load(tmp_path / "out" / "checkpoints" / "last.pt", weights_only=True)
    assert torch.allclose(last["model"]["fc.bias"] - 4.0, bias_start)
    assert last["epoch"] == 4 and last["bad_epochs"] == 2
    assert any(line.startswith("early stop") for line in lines)
    assert sum(line.startswith("epoch ") for line in lines) == 4
