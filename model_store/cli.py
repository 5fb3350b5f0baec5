"""`python -m model_store`: publish, demo, sync, list and verify model versions.

Exit status: 0 on success, 1 with one `error: ...` line when the model store refuses (a missing
version, a checksum mismatch, an unreachable store, ...), 2 for a usage error. torch is
imported only by the subcommands that build a model, so `list` answers at once.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from model_store.exceptions import ModelStoreError
from model_store.loader import (
    load,
    local_aliases,
    local_names,
    local_versions,
    read_local_manifest,
    resolve_version_dir,
    verify_version_dir,
    verify_weights_file,
    versions_dir,
)
from model_store.manifest import RESNET_DEPTHS, Manifest, WeightsFile
from model_store.store import (
    list_aliases,
    list_names,
    list_versions,
    open_store,
    read_alias,
    read_manifest,
    version_key,
)
from model_store.sync import sync_version

PROG = "python -m model_store"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.quiet)
    command: Callable[[argparse.Namespace], None] = args.command
    try:
        command(args)
    except ModelStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Publish model versions to a store (file:///dir or s3://bucket/prefix) and sync them "
                    "into a model root (the directory Lambda reads from EFS).",
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    publish = sub.add_parser(
        "publish", help="check and upload a trained model as a new version",
        description="Read a state dict (.pth, SageMaker model.tar.gz or .safetensors; local or s3://), "
                    "detect the ResNet depth and head, load it strictly and run it once, then upload "
                    "safetensors weights and the manifest. Versions are immutable.",
    )
    publish.add_argument("source", metavar="SOURCE",
                         help="model.pth, model.tar.gz or .safetensors (path or s3:// URI)")
    _store_arg(publish)
    _name_version_args(publish)
    publish.add_argument("--alias", help="also point this alias at the new version")
    publish.add_argument("--arch", choices=[f"resnet{d}" for d in RESNET_DEPTHS],
                         help="ResNet depth (default: detected from the weights)")
    publish.add_argument("--head-hidden", type=_positive_int, metavar="N",
                         help="hidden units of a Linear-ReLU-Linear head (default: detected)")
    publish.add_argument("--classes", metavar="FILE", type=Path,
                         help="class names, one per line (default: the 133 dogImages breeds)")
    publish.add_argument("--preprocess", default="resize224", metavar="resize224|imagenet|FILE.json",
                         help="input preprocessing (default: resize224, what the original training used)")
    publish.add_argument("--calibration", metavar="DIR", type=Path,
                         help="images to calibrate an int8 variant on (an ONNX graph for ONNX Runtime; every "
                              "4th image, by name, is held out to check it agrees with fp32: top-1 >= 99%%, "
                              "top-5 >= 95%%, or it is refused)")
    publish.add_argument("--graph", action="store_true",
                         help="also try the fp32 ONNX graph on ONNX Runtime; kept only if it runs "
                              ">= 10%% faster than torch eager here (at 2 threads)")
    publish.set_defaults(command=_cmd_publish)

    demo = sub.add_parser(
        "demo", help="publish a deterministic untrained ResNet-50 (133 classes)",
        description="Publish the demo model: a ResNet-50 with the original 128-unit head and 133 classes, "
                    "identical on every machine, marked trained: false. With its faster variants: int8 "
                    "(an ONNX graph calibrated on generated pictures, kept if it agrees with fp32) and the "
                    "fp32 ONNX graph (kept if >= 10% faster than torch here).",
    )
    _store_arg(demo)
    _name_version_args(demo)
    demo.add_argument("--alias", help="also point this alias at the new version")
    demo.add_argument("--fp32-only", action="store_true",
                      help="skip the int8 and fp32-graph variants (faster to publish)")
    demo.set_defaults(command=_cmd_demo)

    sync = sub.add_parser(
        "sync", help="copy a version into a model root, atomically",
        description="Make ROOT/NAME/versions/VERSION complete or absent: download into a temporary "
                    "directory, verify sha256, rename into place. Safe to run in several processes at once; "
                    "a version already present is skipped. With --alias, the alias symlink is swapped too.",
    )
    _store_arg(sync)
    sync.add_argument("--name", required=True, help="model name")
    _version_or_alias(sync)
    sync.add_argument("--root", required=True, type=Path, help="model root directory (e.g. the EFS mount)")
    sync.add_argument("--keep", type=_positive_int, metavar="N",
                      help="keep the N newest versions (plus aliased ones), delete older ones")
    sync.add_argument("--verify-checksums", action="store_true",
                      help="re-hash a version already present instead of checking sizes only")
    sync.set_defaults(command=_cmd_sync)

    listing = sub.add_parser(
        "list", help="list models, versions and aliases in a store or a model root",
        description="Without --name: every model with its versions and aliases. With --name: one line per "
                    "version (created, architecture, classes, trained, size, aliases).",
    )
    where = listing.add_mutually_exclusive_group(required=True)
    where.add_argument("--store", metavar="URI", help="file:///abs/dir or s3://bucket/prefix")
    where.add_argument("--root", type=Path, help="model root directory: what is synced locally")
    listing.add_argument("--name", help="only this model, one line per version")
    listing.set_defaults(command=_cmd_list)

    verify = sub.add_parser(
        "verify", help="check a version's manifest, sizes and sha256",
        description="Check a version in a store (downloads its weights to a temporary directory) or in a "
                    "model root. --load also builds the model and loads the weights strictly.",
    )
    where = verify.add_mutually_exclusive_group(required=True)
    where.add_argument("--store", metavar="URI", help="file:///abs/dir or s3://bucket/prefix")
    where.add_argument("--root", type=Path, help="model root directory")
    verify.add_argument("--name", required=True, help="model name")
    _version_or_alias(verify)
    verify.add_argument("--load", action="store_true",
                        help="with --root: also load the model as serving would (the fastest variant that runs)")
    verify.set_defaults(command=_cmd_verify)

    for sub_parser in (publish, demo, sync, listing, verify):
        sub_parser.add_argument("-q", "--quiet", action="store_true", help="no progress or step messages")
    return parser


def _store_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, metavar="URI", help="file:///abs/dir or s3://bucket/prefix")


def _name_version_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", required=True, help="model name")
    parser.add_argument("--version", required=True, help="new version name (versions are immutable)")


def _version_or_alias(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--version", help="a version name")
    which.add_argument("--alias", help="an alias name (e.g. prod)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def _configure_logging(quiet: bool) -> None:
    """Step messages from model_store go to stderr; stdout carries only results."""
    logger = logging.getLogger("model_store")
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False


# --- commands -----------------------------------------------------------------------------------

def _cmd_publish(args: argparse.Namespace) -> None:
    from model_store.publish import publish

    depth = int(args.arch.removeprefix("resnet")) if args.arch else None
    manifest = publish(args.source, args.store, args.name, args.version, alias=args.alias, depth=depth,
                       head_hidden=args.head_hidden, classes=args.classes, preprocess=args.preprocess,
                       progress=not args.quiet, calibration=args.calibration, graph=args.graph)
    print(f"published {describe_manifest(manifest)} to {args.store}"
          + (f" (alias {args.alias})" if args.alias else ""))
    _print_variants(manifest)


def _cmd_demo(args: argparse.Namespace) -> None:
    from model_store.demo import publish_demo

    manifest = publish_demo(args.store, args.name, args.version, alias=args.alias,
                            variants=not args.fp32_only, progress=not args.quiet)
    print(f"published {describe_manifest(manifest)} to {args.store}"
          + (f" (alias {args.alias})" if args.alias else ""))
    _print_variants(manifest)


def _print_variants(manifest: Manifest) -> None:
    """The variants published with their figures; a refused one as a warning on stderr."""
    figures = manifest.metrics.get("variants") or {}
    if not figures:
        return
    parts = []
    for variant in manifest.weights:
        info = figures.get(variant, {})
        detail = [f"{info['ms_per_image']:.1f} ms/image"] if "ms_per_image" in info else []
        if "speedup_vs_fp32" in info:
            detail.append(f"{info['speedup_vs_fp32']:.2f}x fp32")
        if "top1_agreement" in info:
            detail.append(f"top-1 agreement {info['top1_agreement']:.1%}")
        if "top5_overlap" in info:
            detail.append(f"top-5 overlap {info['top5_overlap']:.1%}")
        parts.append(f"{variant} ({', '.join(detail)})" if detail else variant)
    print(f"variants: {'; '.join(parts)}")
    for variant, reason in (manifest.metrics.get("refused_variants") or {}).items():
        print(f"warning: {variant} variant not published: {reason}", file=sys.stderr)


def _cmd_sync(args: argparse.Namespace) -> None:
    result = sync_version(args.store, args.name, args.root, version=args.version, alias=args.alias,
                          keep=args.keep, progress=not args.quiet, checksums=args.verify_checksums)
    action = f"downloaded {result.bytes_downloaded / 1e6:.1f} MB" if result.downloaded else "already present"
    alias = f", alias {result.alias} -> {result.version}" if result.alias else ""
    pruned = f", pruned {', '.join(result.pruned)}" if result.pruned else ""
    print(f"synced {result.name} {result.version} into {result.directory} ({action}{alias}{pruned})")


def _cmd_list(args: argparse.Namespace) -> None:
    catalog: _Catalog = _StoreCatalog(args.store) if args.store else _RootCatalog(args.root)
    if not args.name:
        names = catalog.names()
        if not names:
            print(f"no models in {catalog.where}")
        for name in names:
            alias_text = ", ".join(f"{a} -> {v}" for a, v in catalog.aliases(name).items()) or "-"
            print(f"{name}  versions: {', '.join(catalog.versions(name)) or '-'}  aliases: {alias_text}")
        return
    versions = catalog.versions(args.name)
    if not versions:
        print(f"no versions of {args.name} in {catalog.where}")
        return
    by_version: dict[str, list[str]] = {}
    for alias, version in catalog.aliases(args.name).items():
        by_version.setdefault(version, []).append(alias)
    rows = [("VERSION", "CREATED", "ARCH", "CLASSES", "TRAINED", "MB", "ALIASES")]
    for version in versions:
        m = catalog.manifest(args.name, version)
        rows.append((version, m.created_at, _describe_arch(m), str(m.num_classes),
                     "yes" if m.trained else "no", f"{sum(w.size for w in m.weights.values()) / 1e6:.1f}",
                     ", ".join(by_version.get(version, [])) or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


class _Catalog(Protocol):
    """What `list` shows, from a store or from a model root."""

    where: str

    def names(self) -> list[str]: ...
    def versions(self, name: str) -> list[str]: ...
    def aliases(self, name: str) -> dict[str, str]: ...
    def manifest(self, name: str, version: str) -> Manifest: ...


class _StoreCatalog:
    def __init__(self, uri: str) -> None:
        self.store = open_store(uri)
        self.where = self.store.uri

    def names(self) -> list[str]:
        return list_names(self.store)

    def versions(self, name: str) -> list[str]:
        return list_versions(self.store, name)

    def aliases(self, name: str) -> dict[str, str]:
        return list_aliases(self.store, name)

    def manifest(self, name: str, version: str) -> Manifest:
        return read_manifest(self.store, name, version)[0]


class _RootCatalog:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.where = str(root)

    def names(self) -> list[str]:
        return local_names(self.root)

    def versions(self, name: str) -> list[str]:
        return local_versions(self.root, name)

    def aliases(self, name: str) -> dict[str, str]:
        return local_aliases(self.root, name)

    def manifest(self, name: str, version: str) -> Manifest:
        return read_local_manifest(versions_dir(self.root, name) / version, name=name)


def _cmd_verify(args: argparse.Namespace) -> None:
    if args.store:
        _verify_in_store(args)
        return
    directory = resolve_version_dir(args.root, args.name, version=args.version, alias=args.alias)
    manifest = verify_version_dir(directory, name=args.name, checksums=True)
    for variant, weights in manifest.weights.items():
        print(_weights_line(variant, weights))
    if args.load:
        loaded = load(args.root, args.name, version=manifest.version)
        print(f"ok  loaded {describe_manifest(loaded.manifest)} strictly ({loaded.variant})")
    print(f"verified {args.name} {manifest.version} in {directory}")


def _verify_in_store(args: argparse.Namespace) -> None:
    store = open_store(args.store)
    version = args.version or read_alias(store, args.name, args.alias)
    manifest, _ = read_manifest(store, args.name, version)
    with tempfile.TemporaryDirectory(prefix="breedserve-verify-") as workdir:
        for variant, weights in manifest.weights.items():
            store.get_file(version_key(args.name, version, weights.file), Path(workdir) / weights.file,
                           progress=not args.quiet)
            verify_weights_file(Path(workdir), weights, checksum=True)
            print(_weights_line(variant, weights))
    print(f"verified {args.name} {version} in {store.uri}")


def describe_manifest(manifest: Manifest) -> str:
    """One line: name, version, architecture, classes, size, trained flag."""
    size = sum(w.size for w in manifest.weights.values()) / 1e6
    trained = "" if manifest.trained else ", untrained"
    return (f"{manifest.name} {manifest.version}: {_describe_arch(manifest)}, "
            f"{manifest.num_classes} classes, {size:.1f} MB{trained}")


def _weights_line(variant: str, weights: WeightsFile) -> str:
    return f"ok  {variant}  {weights.file}  {weights.size / 1e6:.1f} MB  sha256 {weights.sha256[:16]}..."


def _describe_arch(manifest: Manifest) -> str:
    head = manifest.arch.head
    return manifest.arch.label if head.type == "linear" else f"{manifest.arch.label}+mlp{head.hidden}"
