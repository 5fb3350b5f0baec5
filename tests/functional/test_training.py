"""`python -m training` end to end on a tiny synthetic dataset: one process, torchrun, resume, search,
and the published model answering through the handler's Classifier.

ResNet-18 at 32x32 pixels (a custom preprocessing file, which the manifest carries to serving)
keeps each epoch to a second or two on a CPU.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from handler.classifier import Classifier
from model_store.manifest import Manifest, display_label
from model_store.resnet import build_model
from model_store.sync import sync
from tests.conftest import REPO, free_port
from training.cli import main
from training.model import parse_architecture
from training.synthetic import make_dataset, make_image

EPOCHS = 4
COMMON = ["--arch", "resnet18", "--batch-size", "8", "--lr", "0.001", "--workers", "0", "--seed", "0",
          "--patience", "0", "--device", "cpu"]
EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+)  train_loss \S+  val_loss \S+  val_acc \S+  \S+s", re.MULTILINE)
OUTPUT_FILES = ["checkpoints/best.safetensors", "checkpoints/last.pt", "class_names.txt", "metrics.json",
                "model.safetensors"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("training")


@pytest.fixture(scope="module")
def spec_file(workdir: Path) -> Path:
    path = workdir / "preprocess32.json"
    path.write_text(json.dumps({"resize_mode": "exact", "size": [32, 32]}), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def dataset(workdir: Path) -> Path:
    make_dataset(workdir / "data", classes=3, train_per_class=24, eval_per_class=6, seed=0)
    return workdir / "data"


@pytest.fixture(scope="module")
def small_dataset(workdir: Path) -> Path:
    make_dataset(workdir / "small", classes=3, train_per_class=8, eval_per_class=4, seed=1)
    return workdir / "small"


def run_cli(args: list[str], *, torchrun_procs: int = 0) -> tuple[subprocess.CompletedProcess[str], float]:
    """`python -m training ARGS` in a fresh interpreter (or under torchrun on 127.0.0.1); returns (result, s)."""
    # one thread per process, as torchrun sets for its workers: on a shared 2-core machine a second
    # intra-op thread makes a lone process several times slower, which would hide the DDP comparison
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    launcher = [sys.executable]
    if torchrun_procs:
        launcher += ["-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(torchrun_procs),
                     "--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    started = time.monotonic()
    result = subprocess.run([*launcher, "-m", "training", *args], check=False, capture_output=True, text=True, env=env,
                            cwd=REPO, timeout=480)
    return result, time.monotonic() - started


@pytest.fixture
def one_thread() -> Iterator[None]:
    """In-process runs use one intra-op thread too (see `run_cli`)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def single_run(workdir: Path, dataset: Path, spec_file: Path) -> dict[str, Any]:
    """One process, published to a file:// store (shared by the tests below)."""
    out, store = workdir / "single", f"file://{workdir / 'store'}"
    result, seconds = run_cli(["--data", str(dataset), "--out", str(out), "--epochs", str(EPOCHS),
                               "--preprocess", str(spec_file), *COMMON,
                               "--publish", store, "--name", "tiny", "--version", "v1", "--alias", "live"])
    assert result.returncode == 0, result.stderr
    return {"out": out, "store": store, "stdout": result.stdout, "seconds": seconds}


def read_metrics(out: Path) -> dict[str, Any]:
    return json.loads((out / "metrics.json").read_text(encoding="utf-8"))


def files_under(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


def test_one_process_learns_the_tiny_dataset_and_writes_its_outputs(single_run: dict[str, Any]) -> None:
    # GIVEN a 4-epoch CPU run on 72 separable images
    out = single_run["out"]
    # WHEN its outputs are read
    metrics = read_metrics(out)
    history = metrics["history"]
    # THEN validation loss fell and the model classifies valid and test images
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    assert metrics["val_loss"] == min(h["val_loss"] for h in history)
    assert metrics["val_accuracy"] >= 0.9 and metrics["test_accuracy"] >= 0.9
    assert metrics["world_size"] == 1 and metrics["dataset"] == {"train": 72, "valid": 18, "test": 18}
    # AND one progress line per epoch was printed
    assert [int(m[1]) for m in EPOCH_LINE.finditer(single_run["stdout"])] == [1, 2, 3, 4]
    assert files_under(out) == OUTPUT_FILES
    assert (out / "class_names.txt").read_text().split() == ["001.red", "002.green", "003.blue"]
    # AND the weights load strictly into the serving architecture
    model = build_model(parse_architecture("resnet18"), 3)
    model.load_state_dict(load_file(str(out / "model.safetensors")))
    print(f"\ntiny run: val_acc {metrics['val_accuracy']:.3f}, test_acc {metrics['test_accuracy']:.3f}, "
          f"train {metrics['train_seconds']:.1f}s")


def test_torchrun_with_two_processes_gives_the_same_result_structure(
        single_run: dict[str, Any], workdir: Path, dataset: Path, spec_file: Path) -> None:
    # GIVEN the same command line as the one-process run
    out = workdir / "ddp"
    # WHEN it runs under torchrun with two gloo processes
    result, seconds = run_cli(["--data", str(dataset), "--out", str(out), "--epochs", str(EPOCHS),
                               "--preprocess", str(spec_file), *COMMON], torchrun_procs=2)
    # THEN it succeeds with the same files and metrics keys, as a world of two
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = read_metrics(single_run["out"]), read_metrics(out)
    assert files_under(out) == files_under(single_run["out"])
    assert sorted(two) == sorted(one)
    assert [sorted(h) for h in two["history"]] == [sorted(h) for h in one["history"]]
    assert two["world_size"] == 2 and two["dataset"] == one["dataset"]
    # AND only rank 0 printed progress, and the two processes learned together
    assert [int(m[1]) for m in EPOCH_LINE.finditer(result.stdout)] == [1, 2, 3, 4]
    assert two["val_loss"] < two["history"][0]["val_loss"]
    speedup = one["train_seconds"] / two["train_seconds"]
    print(f"\n2 processes: train {two['train_seconds']:.1f}s vs {one['train_seconds']:.1f}s for one, "
          "one thread each "
          f"(speedup {speedup:.2f}x); wall {seconds:.1f}s vs {single_run['seconds']:.1f}s")


def test_published_model_served_by_the_handler_classifies_held_out_images(
        single_run: dict[str, Any], tmp_path: Path) -> None:
    # GIVEN the one-process run published to a file:// store, synced to a model root
    sync(single_run["store"], "tiny", tmp_path / "models", alias="live", progress=False)
    classifier = Classifier.from_root(tmp_path / "models", "tiny", alias="live")
    # WHEN the handler's Classifier sees images it was never trained on
    rng = random.Random(1234)
    answers = []
    for label, name in enumerate(["001.red", "002.green", "003.blue"]):
        for _ in range(4):
            data = io.BytesIO()
            make_image(label, rng, size=64).save(data, format="PNG")
            answers.append((display_label(name), classifier.classify(data.getvalue(), top_k=1)))
    # THEN every answer names the right class, from a manifest that says how it was trained
    assert [body["predictions"][0]["label"] for _, body in answers] == [expected for expected, _ in answers]
    manifest: Manifest = classifier.manifest
    assert manifest.trained and manifest.arch.label == "resnet18"
    assert manifest.preprocess.size == (32, 32)
    assert manifest.metrics["test_accuracy"] == read_metrics(single_run["out"])["test_accuracy"]
    assert {"val_loss", "epochs"} <= set(manifest.metrics)


def test_resume_continues_at_the_next_epoch_as_if_never_stopped(
        workdir: Path, small_dataset: Path, spec_file: Path, capsys: pytest.CaptureFixture[str],
        one_thread: None) -> None:
    # GIVEN a run stopped after epoch 1 and an uninterrupted 2-epoch run with the same seed
    base = ["--data", str(small_dataset), "--preprocess", str(spec_file), *COMMON]
    assert main([*base, "--out", str(workdir / "straight"), "--epochs", "2"]) == 0
    assert main([*base, "--out", str(workdir / "resumed"), "--epochs", "1"]) == 0
    capsys.readouterr()
    # WHEN the stopped run is resumed to 2 epochs
    code = main([*base, "--out", str(workdir / "resumed"), "--epochs", "2", "--resume"])
    printed = capsys.readouterr().out
    # THEN it starts at epoch 2 and ends where the uninterrupted run ended
    assert code == 0
    assert "resuming after epoch 1" in printed
    assert [int(m[1]) for m in EPOCH_LINE.finditer(printed)] == [2]
    straight, resumed = read_metrics(workdir / "straight"), read_metrics(workdir / "resumed")
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    for a, b in zip(straight["history"], resumed["history"]):
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-4)
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)


def test_search_runs_trials_and_publishes_the_best(
        workdir: Path, small_dataset: Path, spec_file: Path, capsys: pytest.CaptureFixture[str],
        one_thread: None) -> None:
    # GIVEN a two-trial random search of one epoch each
    out, store = workdir / "search", f"file://{workdir / 'search-store'}"
    # WHEN it runs with --publish
    code = main(["--data", str(small_dataset), "--preprocess", str(spec_file), *COMMON, "--out", str(out),
                 "--epochs", "1", "--search", "2", "--publish", store, "--name", "tiny", "--version", "s1"])
    printed = capsys.readouterr().out
    # THEN a results table is printed and the lowest validation loss wins
    assert code == 0
    assert re.search(r"trial\s+lr\s+batch\s+epochs\s+val_loss", printed)
    metrics = read_metrics(out)
    trials = metrics["search"]["trials"]
    assert len(trials) == 2 and len({(t["lr"], t["batch_size"]) for t in trials}) == 2
    best = min(trials, key=lambda t: t["val_loss"])
    assert metrics["search"]["best_trial"] == best["trial"] and metrics["val_loss"] == best["val_loss"]
    # AND the output and the published version are that trial's model
    best_dir = out / "trials" / f"trial-{best['trial']:02d}"
    assert (out / "model.safetensors").read_bytes() == (best_dir / "model.safetensors").read_bytes()
    sync(store, "tiny", workdir / "search-models", version="s1", progress=False)
    manifest = Manifest.read(workdir / "search-models" / "tiny" / "versions" / "s1" / "manifest.json")
    assert manifest.metrics["val_loss"] == best["val_loss"] and manifest.metrics["lr"] == best["lr"]
