"""What every benchmark shares: where results go, the environment a result was measured with, device
synchronisation, peak memory, timing in turns, and the environment of the benchmark's subprocesses."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
RESULTS_DIR = PACKAGE_DIR / "results"


def environment() -> dict[str, Any]:
    """The machine and library versions a result was measured with."""
    from cartoonify.utils import library_versions, machine_info

    return {"machine": machine_info(), "versions": library_versions(), "python": platform.python_version()}


def is_cuda(device) -> bool:
    return getattr(device, "type", str(device)) == "cuda"


def peak_memory_bytes(device) -> int:
    """CUDA: max allocated since the last reset; CPU: this process's peak resident set size since the last
    reset (Linux; elsewhere since the process started)."""
    import torch

    if is_cuda(device):
        return int(torch.cuda.max_memory_allocated())
    try:
        status = Path("/proc/self/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) * 1024
    except (OSError, StopIteration, ValueError):
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def heap_in_use_bytes() -> int | None:
    """Bytes the C heap holds in live allocations now (glibc's ``mallinfo2``: in-use chunks plus mmapped
    blocks), where CPU tensors live; None where it is not available. Unlike the resident size it falls when a
    tensor is freed, so it shows what a point of a step holds."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                          "fsmblks", "uordblks", "fordblks", "keepcost")]

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo2
    except (OSError, AttributeError):
        return None
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def reset_peak_memory(device) -> None:
    """Start the peak memory afresh: CUDA's allocator statistics, or on Linux the process's resident peak
    (writing 5 to /proc/self/clear_refs resets VmHWM to the current resident size)."""
    import torch

    if is_cuda(device):
        torch.cuda.reset_peak_memory_stats()
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # not Linux: the peak since the process started


def sync(device) -> None:
    """Wait for the device's queued work (CUDA), so that a wall-clock reading covers it."""
    import torch

    if is_cuda(device):
        torch.cuda.synchronize()


def time_in_turns(
    ways: dict[str, Callable[[], Any]], device, repeats: int, warmup: bool = True
) -> dict[str, list[float]]:
    """Seconds of each call, ``repeats`` times, taking turns: a slow spell of the machine hits all alike.

    With ``warmup`` each way first runs once, untimed."""
    times: dict[str, list[float]] = {name: [] for name in ways}
    if warmup:
        for fn in ways.values():
            fn()
    for _ in range(repeats):
        for name, fn in ways.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def per_second(count: int, times: dict[str, list[float]], suffix: str) -> dict[str, float]:
    """``{<name><suffix>: count / median seconds}`` of :func:`time_in_turns`' result."""
    return {f"{name}{suffix}": count / statistics.median(ts) for name, ts in times.items()}


def subprocess_env() -> dict[str, str]:
    """This process's environment, offline, with the repository root importable (``benchmarks``)."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": str(REPO_ROOT) + (os.pathsep + path if path else "")}
