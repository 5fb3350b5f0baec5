"""The command line: --help, and mistakes found before any training, each as one line and exit 1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.cli import build_parser, main, make_config
from training.distributed import Context
from training.synthetic import make_dataset


@pytest.fixture
def data(tmp_path: Path) -> Path:
    make_dataset(tmp_path / "data", classes=2, train_per_class=2, eval_per_class=1, size=16)
    return tmp_path / "data"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def test_help_lists_the_flags(capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN / WHEN --help
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    # THEN it exits 0 and documents the main options
    text = capsys.readouterr().out
    assert exit_info.value.code == 0
    for flag in ("--data", "--arch", "--head-hidden", "--pretrained", "--freeze-backbone", "--resume",
                 "--search", "--amp", "--publish", "torchrun"):
        assert flag in text


@pytest.mark.parametrize("extra, message", [
    (["--publish", "file:///tmp/x"], "--publish needs --name and --version"),
    (["--name", "m"], "only make sense with --publish"),
    (["--publish", "file:///tmp/x", "--name", "m", "--version", "../v"], "invalid version"),
    (["--publish", "ftp://x", "--name", "m", "--version", "v"], "unsupported store URI"),
    (["--amp", "on", "--device", "cpu"], "--amp on needs a CUDA GPU"),
    (["--preprocess", "fancy"], "expected resize224, imagenet or an existing JSON file"),
    (["--arch", "vgg16"], "--arch 'vgg16'"),
    (["--pretrained", "/nonexistent.pth"], "--pretrained /nonexistent.pth does not exist"),
    (["--resume"], "no checkpoint at"),
    (["--batch-size", "0"], "--batch-size must be positive"),
])
def test_mistakes_are_one_line_and_exit_1(data: Path, tmp_path: Path, extra: list[str], message: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN a valid dataset and one wrong flag
    argv = ["--data", str(data), "--out", str(tmp_path / "out"), "--arch", "resnet18", "--epochs", "1",
            "--workers", "0", *extra]
    # WHEN the command runs
    code, err = run(argv, capsys)
    # THEN it stops before training with one line that says what to fix
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_mismatched_class_folders_and_an_existing_version_stop_the_run(
        data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN a store that already holds m/v1, and a dataset whose test/ misses a class
    (tmp_path / "store" / "m" / "v1").mkdir(parents=True)
    (tmp_path / "store" / "m" / "v1" / "manifest.json").write_text(json.dumps({}))
    base = ["--out", str(tmp_path / "out"), "--arch", "resnet18", "--workers", "0"]
    # WHEN publishing to the taken version, then training on the broken tree
    taken = run(["--data", str(data), *base, "--publish", f"file://{tmp_path / 'store'}", "--name", "m",
                 "--version", "v1"], capsys)
    for image in (data / "test" / "002.green").iterdir():
        image.unlink()
    (data / "test" / "002.green").rmdir()
    broken = run(["--data", str(data), *base], capsys)
    # THEN both fail fast with the reason
    assert taken[0] == 1 and "m version v1 already exists" in taken[1]
    assert broken[0] == 1 and "test/ and train/ list different classes" in broken[1]


def test_sagemaker_script_mode_needs_no_paths_and_gives_every_flag_a_value(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN SageMaker's environment, which passes hyperparameters as `--key value` pairs
    monkeypatch.setenv("SM_CHANNEL_TRAINING", str(tmp_path / "data"))
    monkeypatch.setenv("SM_MODEL_DIR", str(tmp_path / "model"))
    argv = ["--arch", "resnet18", "--freeze-backbone", "true", "--resume", "auto",
            "--checkpoint-dir", str(tmp_path / "ck")]
    # WHEN the flags are parsed before and after a checkpoint exists
    args = build_parser().parse_args(argv)
    first = make_config(args, Context())
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "last.pt").write_bytes(b"")
    restarted = make_config(args, Context())
    # THEN the channel and model directory are the defaults, and `auto` resumes only when it can
    assert (args.data, args.out) == (tmp_path / "data", tmp_path / "model")
    assert first.freeze_backbone is True and first.resume is False and restarted.resume is True
    assert first.checkpoints == tmp_path / "ck"
    assert build_parser().parse_args([*argv[:2], "--freeze-backbone", "false"]).freeze_backbone is False
    assert build_parser().parse_args(["--freeze-backbone"]).freeze_backbone is True
