"""Load a synced model version from a model root (the EFS directory) for serving.

A model root looks like this (`sync` writes it, this module only reads it):

    <root>/<name>/versions/<version>/manifest.json
    <root>/<name>/versions/<version>/model.safetensors
    <root>/<name>/<alias> -> versions/<version>        relative symlink

Loading never trusts the disk: the manifest is parsed strictly and every weights file is checked
against its recorded size and sha256 before it is used. The network is built on the `meta`
device and the safetensors tensors are assigned into it, which skips both random initialisation
and a copy (that is most of a cold start). torch is imported only when a model is built, so
`sync` and the CLI can use the layout helpers here without paying for it.

A version may carry faster variants made at publish time (`model_store.variants`): `int8`
(rebuilt from plain int8 tensors for the quantized engine its format names) and `fp32-graph` (a
frozen TorchScript graph, loaded only from bytes whose sha256 matched). Without an explicit
variant, `choose_variant` takes the fastest one present that this machine can run.
"""

from __future__ import annotations

import hashlib
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
from model_store.manifest import MANIFEST_FILE, Manifest, WeightsFile, check_name

if TYPE_CHECKING:
    from torch import nn

VERSIONS_DIR = "versions"
log = logging.getLogger(__name__)
DEFAULT_VARIANT = "fp32"
VARIANT_PREFERENCE = ("int8", "fp32-graph", "fp32")
"""Without MODEL_VARIANT: the first of these a version has and this machine runs (fastest first)."""


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for inference (eval mode) with the manifest and directory it came from."""

    model: nn.Module
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

VariantLoader = Callable[[Manifest, Path], "nn.Module"]
"""Build the network for a manifest and fill it from a verified weights file."""


def _load_fp32(manifest: Manifest, weights_path: Path) -> nn.Module:
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
    return model


def _load_int8(manifest: Manifest, weights_path: Path) -> nn.Module:
    from model_store.quantize import engine_of, load_int8

    engine = engine_of(manifest.weights["int8"].format)
    if engine is None:
        raise VariantError(f"{weights_path}: the int8 variant has format "
                           f"{manifest.weights['int8'].format!r}, expected 'safetensors-int8-<engine>'")
    return load_int8(manifest.arch, manifest.num_classes, weights_path, engine)


def _load_graph(manifest: Manifest, weights_path: Path) -> nn.Module:
    from model_store.graph import GRAPH_FORMAT, load_graph

    entry = manifest.weights["fp32-graph"]
    if entry.format != GRAPH_FORMAT:
        raise VariantError(f"{weights_path}: the fp32-graph variant has format {entry.format!r}, "
                           f"expected {GRAPH_FORMAT!r}")
    return load_graph(weights_path, entry)  # verifies the very bytes it loads


VARIANT_LOADERS: dict[str, VariantLoader] = {
    "fp32": _load_fp32, "int8": _load_int8, "fp32-graph": _load_graph,
}
"""variant name -> loader. Adding a variant is one entry here plus its manifest entry."""

SELF_VERIFYING = frozenset({"fp32-graph"})
"""Variants whose loader checks the sha256 of the bytes it loads itself (code must not be read twice)."""


def runnable(manifest: Manifest, variant: str) -> bool:
    """Whether this machine can run `variant` of `manifest` (int8 needs its quantized engine)."""
    entry = manifest.weights.get(variant)
    if entry is None or variant not in VARIANT_LOADERS:
        return False
    if variant == "int8":
        from model_store.quantize import engine_of, supported_engines

        return engine_of(entry.format) in supported_engines()
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
         variant: str | None = None) -> LoadedModel:
    """Load `name` (by version or alias) from a model root, verified, in eval mode.

    `variant` None means the fastest the version offers and this machine runs (`choose_variant`);
    should that one fail to load (a damaged file, say), the next fastest is tried, and the failure
    is logged. A named variant is that variant or an error.

    Raises VersionNotFoundError, ManifestError, VariantError, ChecksumError or ArchitectureError,
    each naming the file and what is wrong with it.
    """
    directory = resolve_version_dir(root, name, version=version, alias=alias)
    manifest = read_local_manifest(directory, name=name)
    candidates = candidate_variants(manifest, variant)
    for chosen in candidates[:-1]:
        try:
            return _load_variant(manifest, directory, chosen)
        except (ChecksumError, VariantError, ArchitectureError) as exc:
            log.warning("the %s variant of %s/%s cannot be loaded, trying the next fastest: %s",
                        chosen, manifest.name, manifest.version, exc)
    return _load_variant(manifest, directory, candidates[-1])


def _load_variant(manifest: Manifest, directory: Path, chosen: str) -> LoadedModel:
    loader = VARIANT_LOADERS.get(chosen)
    if loader is None:
        raise VariantError(
            f"unknown weights variant {chosen!r}: this breedserve loads {', '.join(sorted(VARIANT_LOADERS))}"
        )
    if chosen not in manifest.weights:
        raise VariantError(_missing_variant(manifest, chosen))
    weights_path = verify_weights_file(directory, manifest.weights[chosen],
                                       checksum=chosen not in SELF_VERIFYING, reuse_digest=True)
    model = loader(manifest, weights_path)
    model.eval()
    return LoadedModel(model=model, manifest=manifest, directory=directory, variant=chosen)


def _missing_variant(manifest: Manifest, variant: str) -> str:
    return (f"{manifest.name}/{manifest.version} has no {variant!r} weights; "
            f"it has {', '.join(sorted(manifest.weights))}")


# --- prefetch: overlap the weights read with torch's import ----------------------------------

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
    """Read and hash the weights file a coming `load` will verify, in a daemon thread.

    `import torch` takes a second or more on one CPU; a Lambda function has at least two, and its
    weights may sit on EFS, where the first read is the slow part. Started before torch is
    imported, this reads the file (into the page cache) and computes its sha256 meanwhile; `load`
    then finds the digest ready. It never raises: `load` reports every problem itself. Without
    torch it cannot tell whether int8 runs on this CPU, so it takes the fastest variant present.
    """

    def run() -> None:
        try:
            directory = resolve_version_dir(root, name, version=version, alias=alias)
            manifest = read_local_manifest(directory, name=name)
            wanted = variant or next((v for v in VARIANT_PREFERENCE if v in manifest.weights), DEFAULT_VARIANT)
            entry = manifest.weights.get(wanted)
            if entry is None:
                return
            path = directory / entry.file
            if wanted in SELF_VERIFYING:  # its loader hashes the bytes it loads: only warm the page cache
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
