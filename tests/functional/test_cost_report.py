"""`python -m benchmarks cost` end to end: report files, plots, JSON on stdout, errors, no torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from benchmarks.__main__ import main

REPO = Path(__file__).resolve().parents[2]
SAMPLE_LATENCY = Path(__file__).resolve().parent / "data" / "latency_sample.json"
SCENARIOS = REPO / "benchmarks" / "scenarios"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)


def test_report_and_plots_are_written_from_a_small_latency_run(tmp_path: Path) -> None:
    # GIVEN the measured scenario and a small latency.json: recommends 2,048 MB, serves int8 (ONNX
    # Runtime) by default with p50 61.3 ms at 1,769 MB through the emulator (fp32: 412.4 ms)
    out = tmp_path / "reports"
    # WHEN the cost command runs with --out and --format json
    proc = _run("cost", "--scenario", str(SCENARIOS / "measured.toml"), "--latency", str(SAMPLE_LATENCY),
                "--out", str(out), "--format", "json")
    # THEN it succeeds, says what it wrote, and writes the report, its JSON and two decodable PNGs
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stderr
    for name in ("cost.md", "cost.json", "cost_vs_requests.png", "cost_by_memory.png"):
        assert (out / name).stat().st_size > 0, name
    for name in ("cost_vs_requests.png", "cost_by_memory.png"):
        with Image.open(out / name) as image:
            image.verify()
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.width >= 600 and image.height >= 400
    # AND the duration, init, memory and model sizes came from the latency file, for the served variant
    data = json.loads(proc.stdout)
    assert data == json.loads((out / "cost.json").read_text())
    scenario = data["scenario"]
    assert scenario["lambda"]["memory_mb"] == 2048
    assert (scenario["variant"], scenario["engine"]) == ("int8", "onnxruntime")
    assert scenario["duration_ms"] == 61.3 and scenario["billed_duration_ms"] == 62
    assert scenario["init_ms"] == 640.0
    assert scenario["supporting"]["cold_start_read_mb"] == 24.3
    assert scenario["supporting"]["model_mb"] == pytest.approx(94.6 + 94.5 + 24.3)
    assert data["sagemaker_serverless"]["memory_mb"] == 2048
    # AND an EFS read per cold start (1% of 1 M) is of the int8 file only, at $0.03/GB
    assert data["supporting"]["details"]["efs_elastic_reads"] == pytest.approx(10_000 * 24.3 / 1024 * 0.03)
    # AND the report names the variant and engine it priced
    report = (out / "cost.md").read_text()
    assert "| weights variant priced | int8 (onnxruntime) | latency.json served_variant" in report
    assert "int8 on onnxruntime" in data["verdict"]
    # AND the JSON has the structure
    assert set(data["lambda"]) >= {"total_usd", "items"}
    assert set(data["supporting"]["items"]) == {"efs", "s3", "ecr"}
    assert set(data["sagemaker_serverless"]) >= {"total_usd", "items"}
    assert set(data["sagemaker_realtime"]) == {"ml.t2.medium", "ml.m5.large", "ml.g4dn.xlarge"}
    assert set(data["break_even"]) == {"sagemaker_serverless", *data["sagemaker_realtime"]}
    assert set(data["lambda_by_architecture"]) == {"x86_64", "arm64"}


def test_a_scenario_can_price_another_variant_than_the_served_one(tmp_path: Path) -> None:
    # GIVEN the measured scenario asking for fp32, whose warm and cold figures latency.json has too
    text = (SCENARIOS / "measured.toml").read_text().replace('image = "1mp"', 'image = "1mp"\nvariant = "fp32"')
    scenario = tmp_path / "fp32.toml"
    scenario.write_text(text)
    # WHEN it is costed
    proc = _run("cost", "--scenario", str(scenario), "--latency", str(SAMPLE_LATENCY), "--format", "json")
    # THEN fp32's duration, cold start and file are priced, and the scenario is named as the source
    assert proc.returncode == 0, proc.stderr
    priced = json.loads(proc.stdout)["scenario"]
    assert (priced["variant"], priced["engine"]) == ("fp32", "torch")
    assert (priced["duration_ms"], priced["init_ms"]) == (412.4, 1840.0)
    assert priced["supporting"]["cold_start_read_mb"] == 94.6
    assert priced["sources"]["variant"] == "scenario"


def test_cost_md_puts_the_verdict_first_then_table_plots_and_assumptions(tmp_path: Path) -> None:
    # GIVEN the default scenario (no latency file)
    out = tmp_path / "r"
    # WHEN the cost command writes its report
    proc = _run("cost", "--scenario", str(SCENARIOS / "default.toml"), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    report = (out / "cost.md").read_text()
    # THEN the verdict comes straight after the title, and the sections follow in order
    lines = report.splitlines()
    assert lines[0].startswith("# ") and lines[1] == "" and lines[2].startswith("**Verdict.**")
    positions = [report.index(marker) for marker in
                 ("**Verdict.**", "| option |", "## Plots", "](cost_vs_requests.png)", "](cost_by_memory.png)",
                  "## Assumptions", "https://aws.amazon.com/lambda/pricing/", "2026-11-22")]
    assert positions == sorted(positions)
    # AND stdout is the same markdown
    assert proc.stdout == report


def test_cost_without_out_prints_markdown_without_plots() -> None:
    # GIVEN the proposal scenario
    # WHEN the cost command runs without --out
    proc = _run("cost", "--scenario", str(SCENARIOS / "proposal.toml"))
    # THEN it prints the report with the proposal's Lambda bill and no plot section
    assert proc.returncode == 0, proc.stderr
    assert "**Lambda bill** | **$16.89**" in proc.stdout
    assert "## Plots" not in proc.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--scenario", "no/such/scenario.toml"], "error: cannot read scenario no/such/scenario.toml"),
    (["--scenario", str(SCENARIOS / "measured.toml")], "error: "),
    (["--scenario", str(SCENARIOS / "default.toml"), "--latency", "missing.json"], "error: cannot read latency"),
])
def test_failures_exit_non_zero_with_one_clear_line(args: list[str], message: str) -> None:
    # GIVEN a missing file, or a scenario that needs --latency run without it
    # WHEN the cost command runs
    proc = _run("cost", *args)
    # THEN it exits 1 with a single line on stderr and nothing on stdout
    assert proc.returncode == 1
    assert proc.stderr.startswith(message) and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stdout == ""


def test_help_lists_the_cost_command_and_its_options() -> None:
    # GIVEN / WHEN help is asked at both levels
    top, cost = _run("--help"), _run("cost", "--help")
    # THEN both succeed and describe the command and its options
    assert top.returncode == 0 and "cost" in top.stdout
    assert cost.returncode == 0
    for option in ("--scenario", "--latency", "--out", "--format"):
        assert option in cost.stdout


def test_cost_path_never_imports_torch(tmp_path: Path) -> None:
    # GIVEN a fresh interpreter
    code = (
        "import sys\n"
        "from benchmarks.__main__ import main\n"
        f"rc = main(['cost', '--scenario', {str(SCENARIOS / 'measured.toml')!r}, '--latency', "
        f"{str(SAMPLE_LATENCY)!r}, '--out', {str(tmp_path)!r}, '--format', 'json'])\n"
        "assert rc == 0\n"
        "print('torch' in sys.modules, 'torchvision' in sys.modules)\n"
    )
    # WHEN the whole cost command (report and plots) runs in it
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=False)
    # THEN neither torch nor torchvision was imported
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "False False"


def test_main_returns_zero_and_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN the proposal's SageMaker scenario
    # WHEN main runs in-process with --format json
    rc = main(["cost", "--scenario", str(SCENARIOS / "proposal_sagemaker.toml"), "--format", "json"])
    # THEN it returns 0 and the SageMaker Serverless bill is the proposal's $50.32
    assert rc == 0
    data = json.loads(capsys.readouterr().out)
    assert data["sagemaker_serverless"]["total_usd"] == pytest.approx(50.32, rel=0.01)
