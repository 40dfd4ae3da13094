"""The results of a benchmark: ``<out>/<name>.json`` (everything measured) and ``<out>/<name>.md`` (short
tables of the same)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _mb(n: float | None) -> str:
    return "" if n is None else f"{n / 2**20:.0f} MiB"


def _rates(values: dict[str, float]) -> str:
    """``"batch 4: 1.83 images/s, ..."`` of the ``*_images_per_s`` entries."""
    return ", ".join(f"{k.replace('_images_per_s', '').replace('_', ' ')}: {v:.2f} images/s"
                     for k, v in values.items() if k.endswith("images_per_s"))


def header(results: dict[str, Any]) -> list[str]:
    env = results["environment"]
    machine, versions = env["machine"], env["versions"]
    where = machine.get("gpu") or f"{machine.get('processor')} ({machine.get('cpu_count')} CPUs)"
    return [f"# `{results['config']}` benchmark", "",
            f"Machine: {where}; torch {versions.get('torch')}, diffusers {versions.get('diffusers')}.", ""]


def reference_markdown(results: dict[str, Any]) -> list[str]:
    """The trainers' steps/s side by side, and the speed-up."""
    lines = ["| trainer | steps/s (median) | repeats |", "| --- | --- | --- |"]
    for name, row in results["results"].items():
        reps = ", ".join(f"{r:.2f}" for r in row["steps_per_s_repeats"])
        lines.append(f"| {name} | {row['steps_per_s']:.2f} | {reps} |")
    per_round = ", ".join(f"{r:.2f}" for r in results.get("speedup_per_round", []))
    paired = results.get("speedup_paired", results["speedup"])
    steps = results["settings"]["steps"]
    speedup = (f"Speed-up of cartoonify over diffusers' script: **{paired:.2f}x**, the median of the "
               f"rounds' ratios ({per_round}); the ratio of the medians is {results['speedup']:.2f}x.")
    method = (f"Steps/s from the wall-time difference of {steps[1]}- and {steps[0]}-step runs; the trainers "
              "take turns, one round per repeat.")
    return [*lines, "", speedup, "", method]


def training_table(results: dict[str, Any]) -> list[str]:
    """One row per training variant: steps/s, images/s, peak memory, MFU."""
    held = any("held_after_backward_bytes" in row for row in results["training"])
    extra = (" held after backward |", " --- |") if held else ("", "")
    lines = [f"| variant | steps/s | images/s | peak memory | MFU |{extra[0]}", f"| --- | --- | --- | --- | --- |{extra[1]}"]
    for row in results["training"]:
        if "error" in row:
            lines.append(f"| {row['variant']} | error | | | |{' |' if held else ''}")
            continue
        mfu = f"{row['mfu'] * 100:.1f}%" if "mfu" in row else ""
        after = f" {_mb(row.get('held_after_backward_bytes'))} |" if held else ""
        lines.append(f"| {row['variant']} | {row['steps_per_s']:.2f} | {row['images_per_s']:.1f} | "
                     f"{_mb(row['peak_memory_bytes'])} | {mfu} |{after}")
    if held:
        lines += ["", "Peak memory on a CPU: the resident peak of the training steps (reset after loading); held after "
                  "backward: the most the heap held at the end of a backward pass (glibc mallinfo2), where the "
                  "gradients of a plain step are all alive."]
    return lines


def parts_markdown(results: dict[str, Any]) -> list[str]:
    """Class-image generation, the optimizer step and validation, where measured."""
    lines = []
    if "class_generation" in results:
        gen = results["class_generation"]
        lines += ["", f"Class-image generation ({gen.get('images', '?')} images, {gen.get('steps', 50)} steps unless "
                  "named): " + _rates(gen)]
        if "speedup" in gen:
            lines += ["", "Class-image speed-ups, each apart: " + ", ".join(
                f"{k.replace('_', ' ')} {v:.2f}x" for k, v in gen["speedup"].items())]
    if "optimizer_step" in results and "adamw8bit_ms" in results["optimizer_step"]:
        op = results["optimizer_step"]
        lines += ["", (f"Optimizer step over {op['tensors']} tensors ({op['tensors_with_32bit_state']} with "
                       f"32-bit state): AdamW8bit {op['adamw8bit_ms']:.1f} ms, with the 32-bit tensors fused "
                       f"{op['adamw8bit_fused_small_ms']:.1f} ms")]
    if "validation" in results:
        lines += ["", "Validation sampling: " + _rates(results["validation"])]
    return lines


def method_note(settings: dict[str, Any]) -> list[str]:
    rounds = settings.get("rounds", 1)
    note = (f"Steps/s: one over the median step time of {rounds * settings['repeats']} timed runs of "
            f"{settings['steps']} steps, each after {settings['warmup']} warm-up steps; every variant in its own "
            f"process, {rounds} round(s) of all variants in turn.")
    return ["", note]


def profile_markdown(prof: dict[str, Any] | None) -> list[str]:
    """The profile's regions (ms per step, share) and its top operators."""
    if not prof or "regions" not in prof:
        return []
    device = "device_ms" in prof["regions"][0]
    title = (f"Where a step of the default goes (torch.profiler over {prof['profiled_steps']} steps, "
             f"{prof['step_ms']:.0f} ms per profiled step):")
    lines = ["", title, ""]
    lines += ["| region | ms/step | share |" + (" device ms/step |" if device else ""),
              "| --- | --- | --- |" + (" --- |" if device else "")]
    for r in prof["regions"]:
        share = f"{r['cpu_ms'] / prof['step_ms'] * 100:.0f}%" if prof["step_ms"] else ""
        extra = f" {r['device_ms']:.1f} |" if device and "device_ms" in r else (" |" if device else "")
        lines.append(f"| {r['region']} | {r['cpu_ms']:.1f} | {share} |" + extra)
    key = "self_device_ms" if device else "self_cpu_ms"
    lines += ["", "Top operators by self time:", "", "| operator | calls/step | ms/step |", "| --- | --- | --- |"]
    lines += [f"| `{o['op']}` | {o['calls_per_step']:.0f} | {o[key]:.1f} |" for o in prof["top_ops"]]
    return lines


def markdown(results: dict[str, Any]) -> str:
    """A short table of a results dict."""
    lines = header(results)
    if results["config"] == "reference":
        lines += reference_markdown(results)
    elif results["config"] == "recipe":
        from .recipe import recipe_markdown

        lines += recipe_markdown(results)
    else:
        lines += training_table(results) + parts_markdown(results) + method_note(results["settings"])
        lines += profile_markdown(results.get("profile"))
    if results.get("skipped_for_budget"):
        lines += ["", f"Not measured, the budget ({results.get('budget_s', 0):.0f} s) being spent: "
                  + "; ".join(results["skipped_for_budget"]) + "."]
    return "\n".join(lines) + "\n"


def write_results(results: dict[str, Any], out_dir: str | Path, name: str) -> tuple[Path, Path]:
    """``<out_dir>/<name>.json`` and ``.md``, each written atomically."""
    from cartoonify.utils import atomic_write_text, write_json

    out_dir = Path(out_dir)
    return write_json(out_dir / f"{name}.json", results), atomic_write_text(out_dir / f"{name}.md", markdown(results))
