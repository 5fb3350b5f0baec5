"""Build the Lambda container image with docker or podman, also on machines with no registry.

`build_image` builds the repo's Dockerfile as it is, with docker when a daemon answers, else with
podman. Everything machine-specific is a build argument, so the image that CI proves is the one
users build, differing only in what it is built *from*.

`build_local_image` is for hosts that reach Debian and PyPI but no container registry (our CI):
`ensure_local_base_image` debootstraps Debian bookworm with python3 and imports it into podman
once per machine (the tag carries a key of the recipe, so a changed recipe builds a new one), and
the build borrows the host's pip settings (find-links, file:// indexes, CA bundle) and, when the
host has one, a CPU-only torch wheel, through a read-only bind mount.

    python -m infra.image build [--tag breedserve:latest] [--platform linux/arm64]
    python -m infra.image build --local     # force the local base (auto when no registry answers)
    python -m infra.image base              # just the local base image
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import platform as host_platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from infra.exceptions import InfraError, PushError

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
DEFAULT_TAG = "breedserve:latest"
ENGINES = ("docker", "podman")

BASE_REPOSITORY = "localhost/breedserve-base"
BASE_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "python-is-python3", "ca-certificates")
# Bump when the recipe below changes in a way the key cannot see (e.g. the clean-up list).
_BASE_RECIPE_VERSION = 1
_BASE_PYTHON_LABEL = "org.breedserve.python"
_DEFAULT_MIRROR = "http://deb.debian.org/debian"

# Where build_local_image mounts the host's pip settings inside RUN steps (read-only).
_HOST_PIP_MOUNT = "/run/breedserve-pip"
# Keys of `pip config list` the image build may reuse; `constraint` and the like stay on the host.
_PIP_KEYS = ("index-url", "extra-index-url", "find-links", "cert", "trusted-host")
_ARCHES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
_WHEEL_ARCH = {"amd64": "x86_64", "arm64": "aarch64"}


@dataclass(frozen=True)
class BuiltImage:
    """The result of a build: what to run or push, and what it cost."""

    tag: str
    engine: str
    image_id: str
    seconds: float


@dataclass(frozen=True)
class HostPip:
    """The host's pip settings, translated for a build: build args and read-only bind mounts."""

    build_args: dict[str, str]
    volumes: tuple[tuple[str, str], ...]


# --------------------------------------------------------------------------------------------
# Engines


def detect_engine() -> str:
    """`docker` when a daemon answers `docker info`, else `podman` (the emulator's rule, one place)."""
    from emulator.container import detect_engine as detect
    from emulator.exceptions import ContainerEngineError

    try:
        return detect("auto")
    except ContainerEngineError as exc:
        raise PushError(f"{exc} (run infra/image_setup.sh)") from exc


def normalize_platform(platform: str | None) -> str | None:
    """`linux/amd64` or `linux/arm64` from any of the spellings users type (x86_64, aarch64...)."""
    if platform is None:
        return None
    arch = platform.split("/")[-1].lower()
    if arch not in _ARCHES:
        raise PushError(f"--platform {platform}: Lambda runs linux/amd64 (x86_64) or linux/arm64 only")
    return f"linux/{_ARCHES[arch]}"


def host_arch() -> str:
    """The host's architecture in OCI terms (amd64/arm64)."""
    machine = host_platform.machine().lower()
    if machine not in _ARCHES:
        raise PushError(f"host architecture {machine} cannot build a Lambda image")
    return _ARCHES[machine]


def build_command(engine: str, tag: str, *, platform: str | None, build_args: Mapping[str, str],
                  volumes: Sequence[tuple[str, str]] = (), context: Path = REPO,
                  dockerfile: Path = DOCKERFILE) -> list[str]:
    """The exact build command line, as data, so it can be checked without an engine."""
    if engine == "docker":
        if volumes:
            raise PushError("build-time bind mounts need podman; docker builds use the default base and PyPI")
        # --provenance=false: Lambda rejects the image index buildx makes for attestations.
        command = ["docker", "buildx", "build", "--load", "--provenance=false"]
    elif engine == "podman":
        # Host network: the only network mode allowed here besides none (no bridge, no NAT).
        command = ["podman", "build", "--network", "host", "--layers", "--format", "docker"]
    else:
        raise PushError(f"unknown container engine {engine!r}: use one of {', '.join(ENGINES)}")
    if platform:
        command += ["--platform", platform]
    for name, value in sorted(build_args.items()):
        command += ["--build-arg", f"{name}={value}"]
    for source, target in volumes:
        command += ["--volume", f"{source}:{target}:ro"]
    command += ["--file", str(dockerfile), "--tag", tag, str(context)]
    return command


def build_image(tag: str = DEFAULT_TAG, *, platform: str | None = None, base_image: str | None = None,
                build_args: Mapping[str, str] | None = None, engine: str | None = None,
                volumes: Sequence[tuple[str, str]] = (), context: Path = REPO,
                progress: bool = True) -> BuiltImage:
    """Build the Dockerfile in `context` as `tag`; raises `PushError` with the engine's last words.

    `base_image` and `build_args` are the only knobs: the Dockerfile itself is never rewritten.
    `volumes` (podman only) are mounted read-only into RUN steps.
    """
    engine = engine or detect_engine()
    args = dict(build_args or {})
    if base_image:
        args["BASE_IMAGE"] = base_image
    command = build_command(engine, tag, platform=normalize_platform(platform), build_args=args,
                            volumes=volumes, context=context, dockerfile=context / "Dockerfile")
    _say(progress, f"building {tag} with {engine} (a cold build downloads torch and takes minutes)")
    started = time.monotonic()
    _run(command, what=f"{engine} build", progress=progress)
    seconds = time.monotonic() - started
    image_id = _run([engine, "image", "inspect", "--format", "{{.Id}}", tag], what="image inspect",
                    progress=False).strip()
    _say(progress, f"built {tag} ({image_id[:19]}) in {seconds:.0f} s")
    return BuiltImage(tag=tag, engine=engine, image_id=image_id, seconds=seconds)


def build_local_image(tag: str = DEFAULT_TAG, *, progress: bool = True) -> BuiltImage:
    """Build on a host without registry access: local base image, host pip settings, podman.

    This host's CPU-only torch wheel for the base's Python, when its find-links hold one, is
    used instead of the PyTorch index (which such hosts usually cannot reach either).
    """
    base = ensure_local_base_image(progress=progress)
    python = local_base_python(base)
    with tempfile.TemporaryDirectory(prefix="breedserve-pip-") as workdir:
        host = host_pip_settings(Path(workdir), python=python, arch=host_arch())
        return build_image(tag, base_image=base, build_args=host.build_args, engine="podman",
                           volumes=host.volumes, progress=progress)


# --------------------------------------------------------------------------------------------
# The host's pip settings


def read_pip_config(python: str = sys.executable) -> dict[str, str]:
    """The effective `pip config list` of `python` (environment variables win over files)."""
    try:
        listing = subprocess.run([python, "-m", "pip", "config", "list"], capture_output=True,
                                 text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise PushError(f"cannot read the host's pip configuration with {python}: {exc}") from exc
    found: dict[str, tuple[int, str]] = {}
    for line in listing.splitlines():
        match = re.fullmatch(r"(:env:|[\w-]+)\.([\w-]+)='(.*)'", line.strip())
        if not match:
            continue
        scope, key, value = match.groups()
        rank = {":env:": 2, "global": 0}.get(scope, 1)  # PIP_* > [install] and the like > [global]
        if key in _PIP_KEYS and rank >= found.get(key, (-1, ""))[0]:
            found[key] = (rank, value)
    return {key: value for key, (_, value) in found.items()}


def host_pip_settings(workdir: Path, *, python: str, arch: str,
                      pip_config: Mapping[str, str] | None = None) -> HostPip:
    """Translate the host's pip settings into a pip.conf and mounts for the image build.

    `workdir` receives the pip.conf, a copy of the CA bundle and, if a CPU-only torch wheel for
    `python` (e.g. "3.11") and `arch` lies in a find-links directory, a one-wheel index that
    becomes TORCH_INDEX_URL. `workdir` is mounted at the same place in every RUN step.
    """
    config = dict(read_pip_config() if pip_config is None else pip_config)
    volumes: dict[str, str] = {}
    lines = ["[global]"]
    for key in ("index-url", "extra-index-url", "find-links"):
        if key not in config:
            continue
        locations = []
        for location in config[key].split():
            local = _local_path(location)
            if local is not None and local.exists():
                local = local.resolve()
                # A PEP 503 index links its files relative to .../simple/<name>/: mount its parent.
                mount = local.parent if local.name == "simple" else local
                volumes[str(mount)] = str(mount)
                location = local.as_uri() if location.startswith("file://") else str(local)
            locations.append(location)
        lines.append(f"{key} = {' '.join(locations)}")
    if "trusted-host" in config:
        lines.append(f"trusted-host = {config['trusted-host']}")
    if config.get("cert") and Path(config["cert"]).is_file():
        shutil.copyfile(config["cert"], workdir / "ca.crt")
        lines.append(f"cert = {_HOST_PIP_MOUNT}/ca.crt")
    (workdir / "pip.conf").write_text("\n".join(lines) + "\n")
    volumes[str(workdir)] = _HOST_PIP_MOUNT
    build_args = {"PIP_CONFIG_FILE": f"{_HOST_PIP_MOUNT}/pip.conf"}

    wheel = find_cpu_torch_wheel(config.get("find-links", "").split(), python=python, arch=arch)
    if wheel is not None:
        index = workdir / "torch-index" / "torch"
        index.mkdir(parents=True)
        href = "file://" + urllib.parse.quote(str(wheel))
        (index / "index.html").write_text(
            f'<!DOCTYPE html><html><body><a href="{href}">{wheel.name}</a></body></html>\n')
        volumes[str(wheel.parent)] = str(wheel.parent)
        build_args["TORCH_INDEX_URL"] = f"file://{_HOST_PIP_MOUNT}/torch-index"
        build_args["TORCH_VERSION"] = wheel.name.split("-")[1]
    return HostPip(build_args=build_args, volumes=tuple(sorted(volumes.items())))


def find_cpu_torch_wheel(find_links: Sequence[str], *, python: str, arch: str) -> Path | None:
    """The newest `torch-<v>+cpu` wheel for CPython `python` and `arch` in local find-links."""
    tag = "cp" + python.replace(".", "")
    pattern = re.compile(rf"torch-(\d+)\.(\d+)\.(\d+)\+cpu-{tag}-{tag}-\S*{_WHEEL_ARCH[arch]}\.whl")
    candidates: list[tuple[tuple[int, ...], Path]] = []
    for location in find_links:
        directory = _local_path(location)
        if directory is None or not directory.is_dir():
            continue
        for wheel in directory.glob("torch-*.whl"):
            match = pattern.fullmatch(wheel.name)
            if match:
                candidates.append((tuple(int(part) for part in match.groups()), wheel))
    return max(candidates)[1] if candidates else None


def _local_path(location: str) -> Path | None:
    """A find-links/index location on this machine's disk, or None for a remote URL."""
    if location.startswith("file://"):
        return Path(urllib.parse.unquote(urllib.parse.urlparse(location).path))
    if "://" in location:
        return None
    return Path(location)


# --------------------------------------------------------------------------------------------
# The local base image


def base_image_key(arch: str) -> str:
    """What makes two base images the same: suite, packages, recipe and architecture."""
    recipe = {"suite": BASE_SUITE, "packages": sorted(BASE_PACKAGES), "recipe": _BASE_RECIPE_VERSION,
              "arch": arch}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def local_base_tag(arch: str | None = None) -> str:
    """The tag `ensure_local_base_image` builds for this recipe and architecture."""
    return f"{BASE_REPOSITORY}:{BASE_SUITE}-{base_image_key(arch or host_arch())}"


def ensure_local_base_image(*, progress: bool = True) -> str:
    """Return the tag of a Debian + python3 base image, building it with debootstrap if missing.

    Needs root (debootstrap) and podman. Holds a lock so concurrent builds wait for one another
    instead of debootstrapping twice.
    """
    _require_tools("podman", "debootstrap")
    tag = local_base_tag()
    if _image_exists(tag):
        return tag
    with _lock(Path(tempfile.gettempdir()) / "breedserve-base-image.lock"):
        if _image_exists(tag):
            return tag
        if os.geteuid() != 0:
            raise PushError("building the local base image needs root (debootstrap): run as root or with sudo")
        started = time.monotonic()
        _say(progress, f"building the local base image {tag} with debootstrap (once per machine, ~2 min)")
        # /var/tmp, not /tmp: the root filesystem and its tarball take ~400 MB, too much for a tmpfs.
        with tempfile.TemporaryDirectory(prefix="breedserve-base-", dir="/var/tmp") as workdir:  # nosec B108
            rootfs = Path(workdir) / "rootfs"
            _debootstrap(rootfs, progress=progress)
            python = _rootfs_python(rootfs)
            tarball = Path(workdir) / "rootfs.tar"
            _run(["tar", "--numeric-owner", "--xattrs", "-C", str(rootfs), "--exclude=./dev/*",
                  "--exclude=./proc/*", "--exclude=./sys/*", "-cf", str(tarball), "."],
                 what="tar of the base root filesystem", progress=False)
            changes = ["ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                       "ENV LANG=C.UTF-8", 'CMD ["python3"]',
                       f"LABEL {_BASE_PYTHON_LABEL}={python}"]
            command = ["podman", "import"]
            for change in changes:
                command += ["--change", change]
            _run(command + [str(tarball), tag], what="podman import", progress=False)
        _say(progress, f"base image {tag} (Python {python}) ready in {time.monotonic() - started:.0f} s")
    return tag


def local_base_python(tag: str) -> str:
    """The Python version ("3.11") a local base image carries, from the label set at import."""
    value = _run(["podman", "image", "inspect", "--format",
                  f'{{{{ index .Config.Labels "{_BASE_PYTHON_LABEL}" }}}}', tag],
                 what="image inspect", progress=False).strip()
    if not re.fullmatch(r"3\.\d+", value):
        raise PushError(f"{tag} has no {_BASE_PYTHON_LABEL} label: remove it (podman rmi {tag}) and rebuild")
    return value


def debian_mirror() -> str:
    """The Debian mirror the host's apt uses for BASE_SUITE (reached the same way apt reaches it)."""
    try:
        listing = subprocess.run(["apt-get", "indextargets", "--format", "$(REPO_URI) $(RELEASE)"],
                                 capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return _DEFAULT_MIRROR
    for line in listing.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1] == BASE_SUITE:
            return parts[0].rstrip("/")
    return _DEFAULT_MIRROR


def _apt_proxy_env() -> dict[str, str]:
    """apt's configured HTTP proxy, as the environment debootstrap's downloads honour."""
    try:
        proxy = subprocess.run(["apt-config", "shell", "PROXY", "Acquire::http::Proxy"],
                               capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    match = re.search(r"PROXY='([^']+)'", proxy)
    return {"http_proxy": match.group(1)} if match else {}


def _debootstrap(rootfs: Path, *, progress: bool) -> None:
    """A minbase Debian with python3, its apt caches removed (they are not needed at run time)."""
    mirror = debian_mirror()
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive", **_apt_proxy_env())
    _run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
          f"--arch={host_arch()}", BASE_SUITE, str(rootfs), mirror],
         what=f"debootstrap {BASE_SUITE} from {mirror}", progress=progress, env=env)
    for leftover in ("var/cache/apt/archives", "var/lib/apt/lists", "var/log"):
        for path in (rootfs / leftover).glob("*"):
            if path.is_file() or path.is_symlink():
                path.unlink()
            elif path.is_dir() and path.name != "partial":
                shutil.rmtree(path)


def _rootfs_python(rootfs: Path) -> str:
    """The python3 version inside a debootstrapped tree, read from the interpreter's path."""
    versions = sorted(path.name.removeprefix("python") for path in (rootfs / "usr/bin").glob("python3.*")
                      if re.fullmatch(r"python3\.\d+", path.name))
    if not versions:
        raise PushError("debootstrap finished but left no python3 in the base root filesystem")
    return versions[-1]


# --------------------------------------------------------------------------------------------
# Helpers


def _image_exists(tag: str) -> bool:
    return subprocess.run(["podman", "image", "exists", tag], check=False).returncode == 0


def _require_tools(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        raise PushError(f"{', '.join(missing)} not installed: run infra/image_setup.sh")


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive flock on `path`; never follows a symlink planted there (we may run as root)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"image: {message}", file=sys.stderr, flush=True)


def _run(command: Sequence[str], *, what: str, progress: bool, env: Mapping[str, str] | None = None) -> str:
    """Run a command and return its stdout; with `progress`, echo its output to stderr as it comes.

    On failure the `PushError` carries the command's own last error line, so the one line the CLI
    prints says what went wrong without scrolling back.
    """
    try:
        process = subprocess.Popen(command, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT if progress else subprocess.PIPE,
                                   text=True, env=env)
    except OSError as exc:
        raise PushError(f"{what} could not start: {exc}") from exc
    if progress:
        lines: list[str] = []
        for line in process.stdout or ():
            sys.stderr.write(line)
            sys.stderr.flush()
            lines = (lines + [line.rstrip()])[-50:]
        process.wait()
        output, errors = "", lines
    else:
        out, err = process.communicate()
        output, errors = out, err.splitlines()
    if process.returncode != 0:
        meaningful = [line.strip() for line in errors if line.strip()]
        flagged = [line for line in meaningful if line.lower().startswith(("error", "fatal", "e:"))]
        detail = (flagged or meaningful or ["(no output)"])[-1]
        raise PushError(f"{what} failed (exit {process.returncode}): {detail}")
    return output


# --------------------------------------------------------------------------------------------
# CLI


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m infra.image build|base`: one line on failure, non-zero exit."""
    parser = argparse.ArgumentParser(prog="python -m infra.image", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build the Lambda image from the repo's Dockerfile")
    build.add_argument("--tag", default=DEFAULT_TAG, help=f"image tag (default {DEFAULT_TAG})")
    build.add_argument("--platform", help="linux/amd64 (x86_64) or linux/arm64; default: the host's")
    build.add_argument("--base-image", help="override ARG BASE_IMAGE (default: the Dockerfile's)")
    build.add_argument("--engine", choices=ENGINES, help="default: docker if its daemon answers, else podman")
    build.add_argument("--build-arg", action="append", default=[], metavar="NAME=VALUE",
                       help="extra build argument, e.g. TORCH_VERSION=2.14.1 (repeatable)")
    build.add_argument("--local", action=argparse.BooleanOptionalAction, default=None,
                       help="build FROM a debootstrapped Debian base with this host's pip settings and CPU "
                            "torch wheel (podman, root). Default: only when no docker daemon answers and "
                            "the Dockerfile's base image registry cannot be reached")
    commands.add_parser("base", help="build (once) the local Debian base image and print its tag")
    args = parser.parse_args(argv)
    customised = bool(args.platform or args.base_image or args.engine or args.build_arg)
    if args.command == "build" and args.local and customised:
        parser.error("--local decides the base image, engine and build args itself")
    try:
        if args.command == "base":
            print(ensure_local_base_image())
            return 0
        local = args.local
        if local is None:
            local = not customised and _needs_local_base()
        if local:
            built = build_local_image(args.tag)
        else:
            extra = dict(_split_build_arg(item) for item in args.build_arg)
            built = build_image(args.tag, platform=args.platform, base_image=args.base_image,
                                build_args=extra, engine=args.engine)
    except InfraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(built.tag)
    return 0


def dockerfile_base_image(dockerfile: Path = DOCKERFILE) -> str:
    """The default of `ARG BASE_IMAGE` in the Dockerfile (the production base)."""
    match = re.search(r"^ARG BASE_IMAGE=(\S+)$", dockerfile.read_text(), flags=re.MULTILINE)
    if not match:
        raise PushError(f"{dockerfile} has no `ARG BASE_IMAGE=<default>` line")
    return match.group(1)


def registry_reachable(image: str, timeout: float = 5.0) -> bool:
    """Whether the registry serving `image` accepts a TCP connection on 443."""
    host = image.split("/", 1)[0] if "/" in image else "registry-1.docker.io"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _needs_local_base() -> bool:
    """No docker daemon and no route to the production base image: the CI situation."""
    if detect_engine() == "docker":
        return False
    base = dockerfile_base_image()
    if registry_reachable(base):
        return False
    _say(True, f"{base.split('/', 1)[0]} cannot be reached: building on the local Debian base "
               "(--no-local to insist on the default)")
    return True


def _split_build_arg(item: str) -> tuple[str, str]:
    name, sep, value = item.partition("=")
    if not sep or not name:
        raise PushError(f"--build-arg {item!r}: expected NAME=VALUE")
    return name, value


if __name__ == "__main__":
    sys.exit(main())
