"""Reading and writing weights files without ever running code from them.

A `.pth` is a pickle, and a pickle can call anything (`os.system`) while it loads. So a
`.pth` is read only with `torch.load(weights_only=True)`, whose unpickler accepts tensors and
plain containers and refuses every other global; a refusal becomes UnsafeWeightsError.
What is stored and served is always safetensors, which is data only.

SageMaker packs `model.pth` into `model.tar.gz`. Only that member is read, straight from the
archive stream into memory (nothing is extracted to disk, so member paths cannot escape), and
its declared size is capped before reading.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import tarfile
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from model_store.checksums import sha256_file
from model_store.exceptions import SourceError, UnsafeWeightsError

__all__ = ["read_state_dict", "save_safetensors", "sha256_file"]

SAGEMAKER_MEMBER = "model.pth"
MAX_MEMBER_BYTES = 4 * 1024**3
_WRAPPER_KEYS = ("state_dict", "model_state_dict")


def read_state_dict(path: str | Path, *, max_member_bytes: int = MAX_MEMBER_BYTES) -> dict[str, torch.Tensor]:
    """Tensors from a `.pth`/`.pt`, a SageMaker `model.tar.gz` or a `.safetensors` file, on the CPU.

    A checkpoint wrapped as `{"state_dict": ...}` is unwrapped and a DistributedDataParallel
    `module.` prefix is removed, so what comes back has the plain torchvision key names.
    """
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"weights source {path} does not exist or is not a file")
    name = path.name.lower()
    if name.endswith(".safetensors"):
        loaded: Any = _load_safetensors(path)
    elif name.endswith((".pth", ".pt")):
        with path.open("rb") as stream:
            loaded = _torch_load(stream, str(path))
    elif name.endswith((".tar.gz", ".tgz")):
        loaded = _torch_load(_read_sagemaker_member(path, max_member_bytes), f"{path}:{SAGEMAKER_MEMBER}")
    else:
        raise SourceError(
            f"cannot read {path}: expected a .pth/.pt state dict, a SageMaker model.tar.gz or a .safetensors file"
        )
    return _as_state_dict(loaded, str(path))


def save_safetensors(state_dict: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Write tensors as safetensors, atomically (a crash never leaves a half-written file at `path`)."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for key, value in state_dict.items():
        tensor = value.detach().to("cpu").contiguous()
        # safetensors refuses tensors sharing memory; a copy keeps each entry independent.
        span = (tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
        if span in seen:
            tensor = tensor.clone()
        seen.add((tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes()))
        tensors[key] = tensor
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        save_file(tensors, tmp_name, metadata={"format": "pt"})
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise SourceError(f"{path} is not a readable safetensors file: {exc}") from exc


def _torch_load(stream: IO[bytes], where: str) -> Any:
    try:
        return torch.load(stream, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" not in text:
            raise SourceError(f"{where} is not a PyTorch weights file: {text.strip()}") from exc
        found = re.search(r"GLOBAL ([\w.]+)", text)
        detail = f"loading it would call {found[1]}" if found else "it uses pickle instructions outside the allowed set"
        raise UnsafeWeightsError(
            f"{where} was refused: it holds pickled objects other than tensors ({detail}). Nothing from "
            "it was run. Save `model.state_dict()` with torch.save, or convert it to .safetensors."
        ) from exc
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as exc:
        raise SourceError(f"{where} is not a PyTorch weights file: {type(exc).__name__}: {exc}") from exc


def _read_sagemaker_member(path: Path, max_bytes: int) -> io.BytesIO:
    """The bytes of `model.pth` from a SageMaker archive; no other member is read or extracted."""
    try:
        with tarfile.open(path, mode="r|*") as archive:
            for member in archive:
                if member.name.removeprefix("./") != SAGEMAKER_MEMBER:
                    continue
                if not member.isfile():
                    raise SourceError(f"{path}: {member.name} is not a regular file in the archive")
                if member.size > max_bytes:
                    raise SourceError(
                        f"{path}: {member.name} is {member.size} bytes, over the {max_bytes}-byte limit"
                    )
                stream = archive.extractfile(member)
                if stream is None:
                    raise SourceError(f"{path}: cannot read {member.name} from the archive")
                return io.BytesIO(stream.read(member.size))
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise SourceError(f"{path} is not a readable tar.gz archive: {exc}") from exc
    raise SourceError(
        f"{path} holds no {SAGEMAKER_MEMBER} at its top level (a SageMaker model.tar.gz has "
        f"model.pth beside optional code/)"
    )


def _as_state_dict(loaded: Any, where: str) -> dict[str, torch.Tensor]:
    """Unwrap `{"state_dict": ...}` and strip a DDP `module.` prefix; insist on str -> Tensor."""
    if isinstance(loaded, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping) or not loaded:
        raise SourceError(f"{where} does not hold a state dict (a non-empty mapping of names to tensors)")
    not_tensors = [str(k) for k, v in loaded.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise SourceError(f"{where} is not a plain state dict: these entries are not tensors: {not_tensors[:8]}")
    state = dict(loaded)
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state
