"""Load a synced model version from a model root (the EFS directory) for serving.

A model root looks like this (`sync` writes it, this module only reads it):

    <root>/<name>/versions/<version>/manifest.json
    <root>/<name>/versions/<version>/model.safetensors      fp32, always
    <root>/<name>/versions/<version>/model-int8.onnx        int8, when it passed its gate
    <root>/<name>/versions/<version>/model-fp32.onnx        fp32-graph, when it was faster
    <root>/<name>/<alias> -> versions/<version>              relative symlink

Loading never trusts the disk: the manifest is parsed strictly and every weights file is checked
against its recorded size and sha256 before it is used. What comes back is a `Predictor`
(`model_store.predictor`): numpy in, numpy logits out, whichever engine runs it.

- `int8` and `fp32-graph` are ONNX graphs run by ONNX Runtime. A serialized graph is code, so the
  file is read into memory once, those bytes are hashed and checked, and the same bytes are
  handed to ONNX Runtime: nothing can change between the check and the run. Loading them never
  imports torch (over a second of cold start); this module and the ones it imports for them
  (`manifest`, `checksums`, `predictor`, `exceptions`) import no torch at module level.
- `fp32` is the safetensors file: the network is built on the `meta` device and the tensors are
  assigned into it, which skips both random initialisation and a copy, then wrapped in a
  `TorchPredictor`. torch is imported only here, so `sync` and the CLI can use the layout helpers
  without paying for it.

Without an explicit variant, `choose_variant` takes the fastest one present that this machine
can run; if it fails to load, the next fastest is tried and the failure is logged.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from model_store.exceptions import (
    ArchitectureError,
    ChecksumError,
    ManifestError,
    VariantError,
    VersionNotFoundError,
)
from model_store.manifest import MANIFEST_FILE, VARIANT_FORMATS, Manifest, WeightsFile, check_name

if TYPE_CHECKING:
    from torch import nn

    from model_store.predictor import OnnxPredictor, Predictor  # numpy: not before the prefetch starts

VERSIONS_DIR = "versions"
log = logging.getLogger(__name__)
DEFAULT_VARIANT = "fp32"
VARIANT_PREFERENCE = ("int8", "fp32-graph", "fp32")
"""Without MODEL_VARIANT: the first of these a version has and this machine runs (fastest first)."""
ONNX_VARIANTS = frozenset({"int8", "fp32-graph"})
"""Variants stored as ONNX graphs and run by ONNX Runtime."""


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for inference, with the manifest and directory it came from and the variant that runs."""

    predictor: Predictor
    manifest: Manifest
    directory: Path
    variant: str


# --- the layout of a model root -----------------------------------------------------------------

def versions_dir(root: Path | str, name: str) -> Path:
    """`<root>/<name>/versions`: every complete version is one directory in here."""
    return Path(root) / check_name("name", name) / VERSIONS_DIR


def local_names(root: Path | str) -> list[str]:
    """Models with a versions directory under `root`."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir()
                  if not p.name.startswith(".") and (p / VERSIONS_DIR).is_dir())


def local_versions(root: Path | str, name: str) -> list[str]:
    """Versions present under `root` (a version directory is complete by construction: it was renamed in)."""
    directory = versions_dir(root, name)
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir()
                  if not p.name.startswith(".") and (p / MANIFEST_FILE).is_file())


def local_aliases(root: Path | str, name: str) -> dict[str, str]:
    """alias -> version for every alias symlink of `name` (dangling ones too: they show what is missing)."""
    model = Path(root) / check_name("name", name)
    if not model.is_dir():
        return {}
    aliases = {}
    for entry in model.iterdir():
        if entry.name.startswith(".") or not entry.is_symlink():
            continue
        target = os.readlink(entry)
        head, _, version = target.partition("/")
        if head == VERSIONS_DIR and version and "/" not in version:
            aliases[entry.name] = version
    return dict(sorted(aliases.items()))


def describe_root(root: Path | str, name: str) -> str:
    """What a model root holds for `name`, for error messages that help the reader fix the request."""
    versions = local_versions(root, name)
    aliases = local_aliases(root, name)
    if not versions and not aliases:
        names = local_names(root)
        return f"model {name!r} has nothing under {root}; models present: {', '.join(names) or '(none)'}"
    alias_text = ", ".join(f"{a} -> {v}" for a, v in aliases.items()) or "(none)"
    return f"versions present: {', '.join(versions) or '(none)'}; aliases: {alias_text}"


def resolve_version_dir(root: Path | str, name: str, *, version: str | None = None,
                        alias: str | None = None) -> Path:
    """The directory of a version, given the version or an alias; VersionNotFoundError says what IS there.

    An alias is read once here, so a later alias swap cannot change files under a load in progress.
    """
    if (version is None) == (alias is None):
        raise VersionNotFoundError(f"give exactly one of a version or an alias for model {name!r}")
    versions = versions_dir(root, name)
    if alias is not None:
        check_name("alias", alias)
        link = versions.parent / alias
        if not link.is_symlink():
            raise VersionNotFoundError(
                f"no alias {alias!r} for model {name!r} under {root}; {describe_root(root, name)}"
            )
        head, _, version = os.readlink(link).partition("/")
        if head != VERSIONS_DIR or not version or "/" in version:
            raise VersionNotFoundError(
                f"alias {link} does not point into {VERSIONS_DIR}/; sync the alias again"
            )
    assert version is not None
    check_name("version", version)
    directory = versions / version
    if not (directory / MANIFEST_FILE).is_file():
        via = f" (alias {alias!r} points to it)" if alias is not None else ""
        raise VersionNotFoundError(
            f"no version {version!r} of model {name!r} under {root}{via}; {describe_root(root, name)}"
        )
    return directory


# --- verification -------------------------------------------------------------------------------

def read_local_manifest(directory: Path, *, name: str | None = None, version: str | None = None) -> Manifest:
    """Parse `<directory>/manifest.json` and check it describes the version this directory claims to be."""
    path = Path(directory) / MANIFEST_FILE
    try:
        manifest = Manifest.read(path)
    except ManifestError as exc:
        raise ManifestError(f"{path}: {exc}") from exc
    expected_version = version if version is not None else Path(directory).name
    if (name is not None and manifest.name != name) or manifest.version != expected_version:
        raise ManifestError(
            f"{path} describes {manifest.name}/{manifest.version}, "
            f"not {name or manifest.name}/{expected_version}"
        )
    return manifest


def verify_weights_file(directory: Path, weights: WeightsFile, *, checksum: bool = True,
                        reuse_digest: bool = False) -> Path:
    """Check one weights file's size (always) and sha256 (when `checksum`); ChecksumError if either is off.

    `reuse_digest` takes the sha256 this process already computed for the same file (same inode,
    size and modification time), e.g. by `prefetch` while torch was importing.
    """
    path = Path(directory) / weights.file
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ChecksumError(f"{path} is missing ({weights.size} bytes expected)") from None
    if size != weights.size:
        raise ChecksumError(
            f"{path} is {size} bytes but the manifest records {weights.size} (truncated or replaced)"
        )
    if checksum:
        if reuse_digest:
            digest = _DIGESTS.digest(path)
        else:
            from model_store.checksums import sha256_file

            digest = sha256_file(path)
        if digest != weights.sha256:
            raise ChecksumError(f"{path} has sha256 {digest} but the manifest records {weights.sha256}")
    return path


def verify_version_dir(directory: Path, *, name: str | None = None, version: str | None = None,
                       variants: list[str] | None = None, checksums: bool = True) -> Manifest:
    """Check a version directory: manifest, then each weights variant (all by default)."""
    manifest = read_local_manifest(directory, name=name, version=version)
    for variant in variants if variants is not None else list(manifest.weights):
        if variant not in manifest.weights:
            raise VariantError(_missing_variant(manifest, variant))
        verify_weights_file(directory, manifest.weights[variant], checksum=checksums)
    return manifest


# --- loading ------------------------------------------------------------------------------------

VariantLoader = Callable[[Manifest, Path, "int | None"], "Predictor"]
"""Verify a version's file for one variant and build its predictor with that many threads (None: all CPUs)."""


def _load_fp32(manifest: Manifest, directory: Path, threads: int | None) -> Predictor:
    from model_store.predictor import TorchPredictor

    _check_format(manifest, "fp32")
    weights_path = verify_weights_file(directory, manifest.weights["fp32"], reuse_digest=True)
    return TorchPredictor(_fp32_module(manifest, weights_path), threads)


def _fp32_module(manifest: Manifest, weights_path: Path) -> nn.Module:
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from model_store.resnet import build_model

    try:
        state = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ChecksumError(f"{weights_path} is not a readable safetensors file: {exc}") from exc
    wrong = sorted(k for k, t in state.items() if t.is_floating_point() and t.dtype != torch.float32)
    if wrong:
        raise VariantError(
            f"{weights_path} is the fp32 variant but holds {state[wrong[0]].dtype} tensors "
            f"({', '.join(wrong[:3])}, ...)"
        )
    model = build_model(manifest.arch, manifest.num_classes, device="meta")
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise ArchitectureError(
            f"{weights_path} does not fit {manifest.arch.label} with {manifest.num_classes} classes "
            f"as the manifest says: {' '.join(line.strip() for line in first[:4])}"
        ) from exc
    return model.eval()


def _load_onnx(manifest: Manifest, directory: Path, threads: int | None, variant: str) -> Predictor:
    """Read once, verify those bytes, run those bytes: a graph is never parsed before its sha256 matched."""
    from model_store.predictor import OnnxPredictor

    _check_format(manifest, variant)
    if not runnable(manifest, variant):
        raise VariantError(f"the {variant} variant runs on ONNX Runtime, which is not installed here: "
                           "install onnxruntime or serve MODEL_VARIANT=fp32")
    entry = manifest.weights[variant]
    path = directory / entry.file
    data = read_verified_bytes(directory, entry)
    try:
        predictor = OnnxPredictor(data, threads)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VariantError(f"{path} passed its checksum but ONNX Runtime cannot run it: {reason}") from exc
    _check_signature(predictor, manifest, path)
    return predictor


def _check_signature(predictor: OnnxPredictor, manifest: Manifest, path: Path) -> None:
    """The graph must take `input` [N, 3, H, W] and give `logits` [N, classes] for this manifest."""
    from model_store.predictor import ONNX_INPUT, ONNX_OUTPUT

    inputs, outputs = predictor.session.get_inputs(), predictor.session.get_outputs()
    classes = outputs[0].shape[-1] if outputs and outputs[0].shape else None
    if ([i.name for i in inputs] != [ONNX_INPUT] or [o.name for o in outputs] != [ONNX_OUTPUT]
            or len(inputs[0].shape) != 4 or classes != manifest.num_classes):
        found = ", ".join(f"{v.name}{list(v.shape)}" for v in [*inputs, *outputs])
        raise ArchitectureError(f"{path} is not a graph of {manifest.num_classes} classes with input "
                                f"{ONNX_INPUT!r} and output {ONNX_OUTPUT!r}: it has {found}")


def read_verified_bytes(directory: Path, expected: WeightsFile) -> bytes:
    """The file's bytes, read once, after their size and sha256 matched the manifest; ChecksumError if not.

    The size is checked before the read (`verify_weights_file`: a replaced file of another size is
    never read), and again on the bytes read, in case the file changed in between.
    """
    path = verify_weights_file(directory, expected, checksum=False)
    data = path.read_bytes()
    if len(data) != expected.size:
        raise ChecksumError(f"{path} is {len(data)} bytes but the manifest records {expected.size} "
                            "(truncated or replaced); nothing from it was loaded")
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected.sha256:
        raise ChecksumError(f"{path} has sha256 {digest} but the manifest records {expected.sha256}; "
                            "nothing from it was loaded (a graph is code)")
    return data


def _check_format(manifest: Manifest, variant: str) -> None:
    """A variant published by an older breedserve in a format this one no longer runs: say how to fix it."""
    found, wanted = manifest.weights[variant].format, VARIANT_FORMATS[variant]
    if found != wanted:
        raise VariantError(
            f"{manifest.name}/{manifest.version}: the {variant} variant has format {found!r}, but this "
            f"breedserve serves {variant} only as {wanted!r}; republish the model as a new version "
            f"(python -m model_store publish ...) to make a {variant} variant it can run"
        )


VARIANT_LOADERS: dict[str, VariantLoader] = {
    "fp32": _load_fp32,
    "int8": lambda manifest, directory, threads: _load_onnx(manifest, directory, threads, "int8"),
    "fp32-graph": lambda manifest, directory, threads: _load_onnx(manifest, directory, threads, "fp32-graph"),
}
"""variant name -> loader. Adding a variant is one entry here, its format in `manifest.VARIANT_FORMATS`."""


def runnable(manifest: Manifest, variant: str) -> bool:
    """Whether this machine can run `variant` of `manifest`: ONNX variants need onnxruntime installed.

    Looks for the package without importing it (importing is the load's job, and costs time).
    """
    if variant not in manifest.weights or variant not in VARIANT_LOADERS:
        return False
    if variant in ONNX_VARIANTS:
        return importlib.util.find_spec("onnxruntime") is not None
    return True


def choose_variant(manifest: Manifest, requested: str | None = None) -> str:
    """`requested` as is (checked by `load`), else the fastest variant present that runs here."""
    return candidate_variants(manifest, requested)[0]


def candidate_variants(manifest: Manifest, requested: str | None = None) -> list[str]:
    """What `load` tries, in order: the requested variant alone, else every runnable one, fastest first."""
    if requested:
        return [requested]
    return [v for v in VARIANT_PREFERENCE if runnable(manifest, v)] or [DEFAULT_VARIANT]


def load(root: Path | str, name: str, *, version: str | None = None, alias: str | None = None,
         variant: str | None = None, threads: int | None = None) -> LoadedModel:
    """Load `name` (by version or alias) from a model root, verified, as a `Predictor`.

    `variant` None means the fastest the version offers and this machine runs (`choose_variant`);
    should that one fail to load (a damaged file, a format from an older breedserve), the next
    fastest is tried, and the failure is logged. A named variant is that variant or an error.
    `threads`: intra-op threads of the engine (None: every CPU this process may use).

    Raises VersionNotFoundError, ManifestError, VariantError, ChecksumError or ArchitectureError,
    each naming the file and what is wrong with it.
    """
    directory = resolve_version_dir(root, name, version=version, alias=alias)
    manifest = read_local_manifest(directory, name=name)
    candidates = candidate_variants(manifest, variant)
    for chosen in candidates[:-1]:
        try:
            return _load_variant(manifest, directory, chosen, threads)
        except (ChecksumError, VariantError, ArchitectureError) as exc:
            log.warning("the %s variant of %s/%s cannot be loaded, trying the next fastest: %s",
                        chosen, manifest.name, manifest.version, exc)
    return _load_variant(manifest, directory, candidates[-1], threads)


def _load_variant(manifest: Manifest, directory: Path, chosen: str, threads: int | None) -> LoadedModel:
    loader = VARIANT_LOADERS.get(chosen)
    if loader is None:
        raise VariantError(
            f"unknown weights variant {chosen!r}: this breedserve loads {', '.join(sorted(VARIANT_LOADERS))}"
        )
    if chosen not in manifest.weights:
        raise VariantError(_missing_variant(manifest, chosen))
    predictor = loader(manifest, directory, threads)
    return LoadedModel(predictor=predictor, manifest=manifest, directory=directory, variant=chosen)


def _missing_variant(manifest: Manifest, variant: str) -> str:
    return (f"{manifest.name}/{manifest.version} has no {variant!r} weights; "
            f"it has {', '.join(sorted(manifest.weights))}")


# --- prefetch: overlap the weights read with the engine's import ------------------------------

class _DigestCache:
    """sha256 per file, computed once per process; a caller asking while it is computed waits for it.

    A digest is bound to the file's inode, size and modification time, so a file replaced or
    rewritten since is hashed again.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._digests: dict[tuple[str, int, int, int], Future[str]] = {}

    def digest(self, path: Path) -> str:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
        with self._lock:
            future = self._digests.get(key)
            owner = future is None
            if future is None:
                future = self._digests[key] = Future()
        if owner:
            try:
                with path.open("rb") as stream:
                    future.set_result(hashlib.file_digest(stream, "sha256").hexdigest())
            except BaseException as exc:  # noqa: BLE001 - handed to every waiter, re-raised below
                with self._lock:
                    del self._digests[key]
                future.set_exception(exc)
        return future.result()


_DIGESTS = _DigestCache()


def prefetch(root: Path | str, name: str, *, version: str | None = None, alias: str | None = None,
             variant: str | None = None) -> threading.Thread:
    """Read the weights file a coming `load` will verify, in a daemon thread (hashing it too for fp32).

    Importing the engine takes time (torch a second or more, onnxruntime about 0.1 s), and the
    weights may sit on EFS, where the first read is the slow part. Started before the import, this
    reads the file meanwhile. For fp32 it also computes the sha256, which `load` then finds ready.
    For an ONNX variant it only warms the page cache: the loader hashes the very bytes it reads
    and runs (a graph is code), so a digest computed here would be of other bytes. It never
    raises: `load` reports every problem itself. It picks the variant `load` will try first.
    """

    def run() -> None:
        try:
            directory = resolve_version_dir(root, name, version=version, alias=alias)
            manifest = read_local_manifest(directory, name=name)
            wanted = candidate_variants(manifest, variant)[0]
            entry = manifest.weights.get(wanted)
            if entry is None:
                return
            path = directory / entry.file
            if wanted in ONNX_VARIANTS:  # its loader hashes the bytes it runs: only warm the page cache
                with path.open("rb") as stream:
                    while stream.read(1 << 20):
                        pass
            else:
                _DIGESTS.digest(path)
        except Exception as exc:  # noqa: BLE001 - a prefetch only saves time; the load says what is wrong
            log.debug("weights prefetch skipped: %s", exc)

    thread = threading.Thread(target=run, name="breedserve-weights-prefetch", daemon=True)
    thread.start()
    return thread
