"""latency.md: the latency run as tables a person reads in a minute.

Rendered from the `LatencyReport` alone (not from live objects), so the markdown can never say
something latency.json does not. Order: what was measured on what, the targets, cold start,
warm latency per path, the roofline, memory sizes and the recommendation, then the machine.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from benchmarks.cost_latency import LatencyReport, LatencyResult, variant_label
from benchmarks.latency_targets import targets_table

PATH_TITLES = {
    "classifier": "Classifier, in process (decode, preprocess, inference, postprocess)",
    "emulator": "Through the emulator's Function URL (HTTP POST /predict on 127.0.0.1, the real handler "
                "under awslambdaric)",
}


def render_markdown(report: LatencyReport) -> str:
    """The whole latency.md."""
    d = report.details
    machine = report.machine
    model = d.get("model", {})
    run = d.get("run", {})
    title = (f"# Latency: {model.get('arch', 'model')} ({model.get('num_classes', '?')} classes) on "
             f"{machine.get('cpu_model', 'unknown CPU')}")
    load = " / ".join(str(x) for x in machine.get("load_average_at_start", [])) or "unknown"
    rounds = run.get("rounds", 1)
    spread = (f" (on the Classifier path spread over {rounds} interleaved rounds, each after one more discarded)"
              if rounds > 1 else "")
    summary = (f"{run.get('mode', '?')} run, {run.get('samples', '?')} recorded requests per configuration after "
               f"{run.get('warmup', '?')} discarded{spread}, {machine.get('cores', '?')} cores, ONNX Runtime "
               f"{machine.get('onnxruntime_version', '?')}, torch {machine.get('torch_version', '?')}, load "
               f"average at start {load}; took "
               f"{run.get('duration_s', '?')} s. Model {model.get('name')}/{model.get('version')}"
               f"{' (the untrained demo model)' if model.get('demo') else ''}, variants "
               f"{', '.join(_label(report, v) for v in d.get('variants', []))}"
               f"{_skipped(d.get('skipped_variants') or {})}; served without MODEL_VARIANT: "
               f"{_label(report, report.served_variant) if report.served_variant else 'unknown'}.")
    scope = (f"Measured at {d.get('target_threads', '?')} thread(s) on the Classifier path with the ~1 MP photo "
             "unless the row says otherwise. Printed, never asserted by tests.")
    lines = [title, "", summary, ""]
    if run.get("busy"):
        lines += [f"**Warning:** {run['busy']}.", ""]
    lines += ["## Targets (issue 8)", "", scope, "", targets_table(report.targets), ""]
    lines += _cold_start(report)
    for path in ("classifier", "emulator"):
        rows = [r for r in report.results if r.path == path]
        if rows:
            lines += [f"## Warm latency: {PATH_TITLES[path]}", "", *_warm_table(rows, path, report.engines), ""]
    lines += _roofline(report.roofline)
    lines += _sizes(report)
    lines += _batch(d.get("batch") or {})
    lines += _machine(machine, d)
    return "\n".join(lines).rstrip("\n") + "\n"


def _label(report: LatencyReport, variant: str) -> str:
    """A variant and its engine, where latency.json says."""
    return variant_label(variant, report.engines.get(variant))


def _skipped(skipped: Mapping[str, str]) -> str:
    return "".join(f" ({variant} skipped: {why})" for variant, why in skipped.items())


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:,.1f}"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], align: str | None = None) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + (align or "---|" * len(header))]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _cold_start(report: LatencyReport) -> list[str]:
    cold = report.cold_start
    if cold is None:
        return []
    colds = report.details.get("cold_starts", {})
    lines = ["## Cold start", ""]
    if cold.first_response_ms is not None:
        lines.append(f"Through the emulator, {colds.get('headline', '')}: runtime start to first response "
                     f"**{cold.first_response_ms:,.0f} ms**, of which init (Lambda's billed Init Duration) "
                     f"**{cold.init_ms:,.0f} ms**.")
    else:
        lines.append(f"Init: {cold.init_ms:,.0f} ms.")
    served = sorted({f"{c.get('variant', '?')} ({c.get('engine', '?')})" for c in colds.get("child") or []})
    fresh = (f"A fresh process serving {', '.join(served) or 'an unknown variant'} (MODEL_VARIANT unset: the "
             "handler's choice), part by part in `handler.app`'s order: starting the weights prefetch (with "
             "the loader's imports, numpy among them), the engine's import, the handler's import, its init "
             "(`Service.from_env`: model load, session creation, warm-up), the first direct invocation")
    lines += ["", f"{fresh} (median over runs):", ""]
    lines += _table(("part", "ms"), ((part, _ms(ms)) for part, ms in cold.parts_ms.items()), "---|---:|")
    lines.append("")
    if report.peak_rss_mb is not None:
        torch_imported = colds.get("torch_imported")
        torch_line = "unknown" if torch_imported is None else ("yes" if torch_imported else "no")
        lines.append(f"Peak RSS of that process (after the largest photo too): **{report.peak_rss_mb:,.0f} MB**. "
                     f"torch imported: {torch_line}. torchvision imported while serving: "
                     f"{'YES (it should not be)' if colds.get('torchvision_imported') else 'no'}.")
        lines.append("")
    emulator = colds.get("emulator") or []
    if emulator:
        lines += ["Every emulator start:", ""]
        lines += _table(("memory", "threads", "MODEL_VARIANT", "variant served", "init ms", "first response ms"),
                        ((f"{c['memory_mb']:,} MB", str(c["threads"]), c.get("requested", ""),
                          variant_label(c["variant"], c.get("engine")),
                          _ms(c["init_ms"]), _ms(c["first_response_ms"])) for c in emulator),
                        "---|---:|---|---|---:|---:|")
        lines.append("")
    return lines


def _step(r: LatencyResult, name: str) -> str:
    step = r.steps.get(name)
    return _ms(step.get("p50_ms")) if step else ""


def _warm_table(rows: Sequence[LatencyResult], path: str, engines: Mapping[str, str]) -> list[str]:
    header = ["memory", "threads", "variant", "photo", "n", "p50 ms", "p90 ms", "p99 ms", "decode p50",
              "preprocess p50", "inference p50"]
    if path == "emulator":
        header.append("outside handler p50")
    body = []
    for r in rows:
        row = [f"{r.memory_mb:,} MB", str(r.threads), variant_label(r.variant, engines.get(r.variant)), r.image, str(r.samples or ""), _ms(r.p50_ms),
               _ms(r.p90_ms), _ms(r.p99_ms), _step(r, "decode"), _step(r, "preprocess"), _step(r, "inference")]
        if path == "emulator":
            row.append(_step(r, "outside_handler"))
        body.append(row)
    lines = ["p50/p90/p99 are end to end for the path; steps are their p50 (ms)."]
    if path == "emulator":
        lines[0] += (" \"Outside handler\" is what the runtime, the Function URL gateway, base64 and HTTP add "
                     "around the handler's own time.")
    return [*lines, "", *_table(header, body, "---|---:|---|---|---:|" + "---:|" * (len(header) - 5))]


def _roofline(roofline: Mapping[str, Any]) -> list[str]:
    if not roofline:
        return []
    peaks = roofline.get("peak_gflops_by_threads", {})
    roofs = roofline.get("roofline_ms_by_threads", {})
    intro = (f"The model does **{roofline.get('model_gflop', '?')} GFLOP** per image (counted from its conv and "
             f"linear layers). Peak: {roofline.get('matmul', '')}. Roofline time = FLOPs / peak; a ratio below 1 "
             "is faster than fp32 matmul could be.")
    lines = ["## Roofline", "", intro, ""]
    measured = roofline.get("measured_gflops_by_threads") or peaks
    if measured != peaks:
        lines += [f"Peak used per thread count: {roofline.get('peak_rule', '')}.", ""]
    lines += _table(("threads", "measured GFLOP/s", "peak GFLOP/s", "roofline ms"),
                    ((t, f"{measured.get(t, peaks[t]):,.1f}", f"{peaks[t]:,.1f}", f"{roofs.get(t, 0):,.1f}")
                     for t in peaks), "---:|---:|---:|---:|")
    variants = roofline.get("variants") or []
    if variants:
        lines += ["", *_table(("variant", "threads", "inference p50 ms", "roofline ms", "ratio"),
                              ((v["variant"], str(v["threads"]), _ms(v["inference_p50_ms"]), _ms(v["roofline_ms"]),
                                f"{v['ratio']:.2f}") for v in variants), "---|---:|---:|---:|---:|")]
    return [*lines, ""]


def _sizes(report: LatencyReport) -> list[str]:
    d = report.details
    sizes = d.get("sizes") or []
    if not sizes:
        return []
    lines = ["## Lambda memory sizes", ""]
    lines += _table(("memory", "vCPUs on Lambda", "threads here", "measured"),
                    ((f"{s['memory_mb']:,} MB", str(s["vcpus"]), str(s["threads"]),
                      "yes" if s["measured"] else "no: capped at this machine's cores") for s in sizes),
                    "---:|---:|---:|---|")
    lines += ["", d.get("sizes_note", ""), ""]
    rec = d.get("recommendation") or {}
    if rec:
        chosen = f"**{rec['memory_mb']:,} MB**" if rec.get("memory_mb") else "**none**"
        lines += [f"Recommended memory size: {chosen}: {rec.get('reason', '')}.", "",
                  f"Rule: {rec.get('rule', '')} (measured on the {rec.get('basis', '')}).", ""]
    return lines


def _batch(batch: Mapping[str, Any]) -> list[str]:
    if not batch:
        return []
    text = (f"Direct invocations of the handler through the emulator ({batch.get('variant', '?')}, "
            f"{batch.get('engine', '?')}, {batch.get('threads', '?')} thread(s)): `{{\"images\": [...]}}` with "
            f"{batch['batch_size']} copies of the {batch['image']} photo took {batch['batch_p50_ms']:,.1f} ms (p50 "
            f"of {batch.get('batches', '?')}), {batch['per_image_ms']:,.1f} ms per image, against "
            f"{batch['single_p50_ms']:,.1f} ms for one `{{\"image\": ...}}` (p50 of {batch.get('singles', '?')}): "
            f"**{batch['speedup']:.2f}x** the throughput.")
    if "batch_inference_p50_ms" in batch and "single_inference_p50_ms" in batch:
        text += (f" The forward pass took {batch['batch_inference_p50_ms']:,.1f} ms for the batch "
                 f"({batch['batch_inference_p50_ms'] / batch['batch_size']:,.1f} ms per image) against "
                 f"{batch['single_inference_p50_ms']:,.1f} ms for one image; the rest is decoding, "
                 "preprocessing, base64 and the invocation itself.")
    return ["## Batch", "", text, ""]


def _machine(machine: Mapping[str, Any], details: Mapping[str, Any]) -> list[str]:
    lines = ["## Machine", ""]
    rows = [(key, str(value)) for key, value in machine.items() if key not in ("thread_env", "thread_env_note")]
    rows.append(("thread variables", ", ".join(f"{k}={v}" for k, v in (machine.get("thread_env") or {}).items())))
    emulator = details.get("emulator") or {}
    if emulator:
        rows.append(("emulator CPU pinning", str(emulator.get("pinning"))))
        rows.append(("emulator runtime peak RSS", f"{emulator.get('peak_rss_mb', 0):,.0f} MB"))
    lines += _table(("", ""), rows, "---|---|")
    if machine.get("thread_env_note"):
        lines += ["", str(machine["thread_env_note"])]
    photos = details.get("photos") or []
    if photos:
        lines += ["", "Photos (synthetic, deterministic: gradients, shapes, texture and noise, JPEG quality 90): "
                  + "; ".join(f"{p['label']} {p['width']}x{p['height']}, {p['jpeg_kb']:,.0f} KB" for p in photos)
                  + "."]
    return [*lines, ""]
