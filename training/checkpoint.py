"""Checkpoints (resumable state) and the run's output files.

A checkpoint holds only tensors and plain values (state dicts, numbers, strings, lists), so it
is read back with `torch.load(weights_only=True)`: resuming never runs code from a file. It is
written to a temporary name and renamed, so a run killed mid-save keeps the previous one.
The best weights so far live beside it as safetensors; the final `model.safetensors` is them.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from model_store.weights import save_safetensors
from training.exceptions import CheckpointError

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pt"
BEST_WEIGHTS = "best.safetensors"
MODEL_FILE = "model.safetensors"
METRICS_FILE = "metrics.json"
CLASS_NAMES_FILE = "class_names.txt"


def checkpoint_path(directory: Path) -> Path:
    """The latest checkpoint in a checkpoint directory (default `--out/checkpoints`)."""
    return Path(directory) / LAST_CHECKPOINT


def best_weights_path(directory: Path) -> Path:
    return Path(directory) / BEST_WEIGHTS


def capture_rng() -> dict[str, Any]:
    """Random generator states (Python and torch, CPU and CUDA) as tensors and plain values."""
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {"python": [version, list(internal), gauss], "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Atomically write `state` (tensors and plain values only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        torch.save(state, tmp_name)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint with `weights_only=True`; anything else in the file is refused."""
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path} to resume from (on several machines, --out must be "
                              "shared storage that every node can read)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {first}") from exc
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise CheckpointError(f"{path} is not a training checkpoint (no model state or epoch)")
    return state


def save_weights(state_dict: dict[str, torch.Tensor], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(state_dict, path)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read saved weights {path}: {exc}") from exc


def write_json(path: Path, data: Any) -> None:
    """Atomically write pretty JSON (a reader never sees half a metrics file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_outputs(out: Path, state_dict: dict[str, torch.Tensor], metrics: dict[str, Any],
                  class_names: tuple[str, ...]) -> None:
    """The run's results: `model.safetensors`, `metrics.json`, `class_names.txt` (line i = class i)."""
    out.mkdir(parents=True, exist_ok=True)
    save_weights(state_dict, out / MODEL_FILE)
    (out / CLASS_NAMES_FILE).write_text("".join(f"{name}\n" for name in class_names), encoding="utf-8")
    write_json(out / METRICS_FILE, metrics)
