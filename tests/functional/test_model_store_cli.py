"""Functional tests for `python -m model_store`: help, exit codes, publish -> sync -> verify end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import boto3
import numpy as np
import pytest
import torch

from model_store.cli import main
from model_store.loader import load
from model_store.manifest import Architecture, Head
from model_store.resnet import build_model

REPO = Path(__file__).resolve().parents[2]
CLASSES = ("001.Akita", "002.Beagle", "003.Corgi")
SYNC = ["sync", "--store", "file:///s", "--name", "dogs"]
SUBCOMMANDS = {
    "publish": ["--store", "--name", "--version", "--alias", "--arch", "--head-hidden", "--classes",
                "--preprocess"],
    "demo": ["--store", "--name", "--version", "--alias"],
    "sync": ["--store", "--name", "--version", "--alias", "--root", "--keep", "--verify-checksums"],
    "list": ["--store", "--root", "--name"],
    "verify": ["--store", "--root", "--name", "--version", "--alias", "--load"],
}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "model_store", *args], cwd=REPO, capture_output=True,
                          text=True, env=dict(os.environ), timeout=300, check=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path, Path]:
    """A ResNet-18 with a 16-unit MLP head and 3 classes, saved the way SageMaker training saves it."""
    torch.manual_seed(0)
    model = build_model(Architecture(depth=18, head=Head(type="mlp", hidden=16)), len(CLASSES)).eval()
    workdir = tmp_path_factory.mktemp("trained")
    torch.save(model.state_dict(), workdir / "model.pth")
    (workdir / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return model, workdir / "model.pth", workdir / "classes.txt"


# --- help and usage -----------------------------------------------------------------------------

@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_every_subcommand_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN a subcommand / WHEN asked for --help / THEN it exits 0 and documents each option
    with pytest.raises(SystemExit) as caught:
        main([command, "--help"])
    assert caught.value.code == 0
    text = capsys.readouterr().out
    assert all(option in text for option in SUBCOMMANDS[command])


@pytest.mark.parametrize(
    "argv",
    [
        [*SYNC, "--version", "v1", "--alias", "prod", "--root", "/r"],
        [*SYNC, "--version", "v1"],
        [*SYNC, "--version", "v1", "--root", "/r", "--keep", "0"],
        ["list"],
        ["publish", "m.pth", "--store", "file:///s", "--name", "dogs", "--version", "v1",
         "--arch", "resnet19"],
        ["frobnicate"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN a malformed command line / WHEN parsed / THEN exit status 2 with argparse's usage message
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_store_error_exits_1_with_one_clear_line(tmp_path: Path) -> None:
    # GIVEN an empty file store / WHEN a version is synced from it (a real process)
    result = run_cli("sync", "--store", f"file://{tmp_path}/store", "--name", "dogs", "--version", "v9",
                     "--root", str(tmp_path / "root"))
    # THEN exit 1 and exactly one line saying what is missing and what exists
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: no version 'v9' of model 'dogs' in file://{tmp_path}/store; versions present: (none)"
    ]


def test_invalid_store_uri_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--store", "http://example.com/models"]) == 1
    assert capsys.readouterr().err.startswith("error: unsupported store URI 'http://example.com/models'")


# --- end to end ---------------------------------------------------------------------------------

def test_publish_sync_list_verify_load_through_s3(aws_endpoint: str, tmp_path: Path,
                                                   trained: tuple[torch.nn.Module, Path, Path],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN a SageMaker-style model.pth and a bucket on the moto server
    model, pth, classes = trained
    boto3.client("s3").create_bucket(Bucket="models")
    store, root = "s3://models/breedserve", tmp_path / "efs"

    # WHEN it is published with an alias, then synced by that alias (real processes, as a user would)
    published = run_cli("publish", str(pth), "--store", store, "--name", "dogs", "--version", "v1",
                        "--alias", "prod", "--classes", str(classes))
    synced = run_cli("sync", "--store", store, "--name", "dogs", "--alias", "prod", "--root", str(root))

    # THEN both succeed and say what they did
    assert published.returncode == 0, published.stderr
    assert published.stdout.startswith("published dogs v1: resnet18+mlp16, 3 classes, ")
    assert published.stdout.rstrip().endswith(f"MB to {store} (alias prod)")
    assert synced.returncode == 0, synced.stderr
    assert synced.stdout.startswith(f"synced dogs v1 into {root}/dogs/versions/v1 (downloaded ")
    assert synced.stdout.rstrip().endswith("alias prod -> v1)")

    # AND list and verify see it in the store and in the root
    assert main(["list", "--store", store]) == 0
    assert main(["list", "--root", str(root), "--name", "dogs"]) == 0
    assert main(["verify", "--store", store, "--name", "dogs", "--alias", "prod", "-q"]) == 0
    assert main(["verify", "--root", str(root), "--name", "dogs", "--alias", "prod", "--load"]) == 0
    out = capsys.readouterr().out
    assert "dogs  versions: v1  aliases: prod -> v1" in out
    row = next(line.split() for line in out.splitlines() if line.startswith("v1 "))
    assert (row[2], row[3], row[4], row[-1]) == ("resnet18+mlp16", "3", "yes", "prod")
    assert f"verified dogs v1 in {store}" in out
    assert f"verified dogs v1 in {root}/dogs/versions/v1" in out

    # AND the loaded model computes exactly what the trained one does
    threads = torch.get_num_threads()
    try:
        loaded = load(root, "dogs", alias="prod")
    finally:
        torch.set_num_threads(threads)
    probe = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        expected = model(probe).numpy()
    assert loaded.variant == "fp32" and np.array_equal(loaded.predictor(probe.numpy()), expected)
    assert loaded.manifest.class_names == CLASSES


def test_verify_store_catches_a_corrupted_object(tmp_path: Path, trained: tuple[torch.nn.Module, Path, Path],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN a version published to a file store, whose weights object was later damaged in place
    _, pth, classes = trained
    store = f"file://{tmp_path}/store"
    assert main(["publish", str(pth), "--store", store, "--name", "dogs", "--version", "v1",
                 "--classes", str(classes), "-q"]) == 0
    weights = tmp_path / "store" / "dogs" / "v1" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    capsys.readouterr()
    # WHEN verified in the store / THEN exit 1 naming the sha256 mismatch; a sync refuses it too
    assert main(["verify", "--store", store, "--name", "dogs", "--version", "v1", "-q"]) == 1
    assert "has sha256" in capsys.readouterr().err
    assert main(["sync", "--store", store, "--name", "dogs", "--version", "v1", "--root", str(tmp_path / "r"),
                 "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: download of ") and "does not match its manifest" in err
    assert not (tmp_path / "r" / "dogs" / "versions" / "v1").exists()


def test_demo_publishes_an_untrained_resnet50_that_syncs(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN an empty file store / WHEN the demo model is published and synced with the CLI
    store, root = f"file://{tmp_path}/store", tmp_path / "root"
    model = ["--store", store, "--name", "dogbreeds"]
    assert main(["demo", *model, "--version", "demo-1", "--alias", "prod", "--fp32-only", "-q"]) == 0
    assert main(["sync", *model, "--alias", "prod", "--root", str(root)]) == 0
    assert main(["verify", "--root", str(root), "--name", "dogbreeds", "--version", "demo-1"]) == 0
    # THEN it is the 133-class ResNet-50 with the original 128-unit head, flagged untrained
    out = capsys.readouterr().out
    assert "published dogbreeds demo-1: resnet50+mlp128, 133 classes" in out and ", untrained" in out
    assert f"synced dogbreeds demo-1 into {root}/dogbreeds/versions/demo-1 (downloaded" in out
    assert "verified dogbreeds demo-1" in out
