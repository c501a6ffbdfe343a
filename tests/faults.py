"""Helpers for fault-injection tests: kill a ``qadv`` command with SIGKILL mid-run, and
compare the files of two runs up to the fields that legitimately vary."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

# Fields that differ between two correct runs: timings (and every ``*time_s``), provenance,
# where a run resumed.
VARYING = frozenset(
    {"wall_time_s", "seconds", "timing", "environment", "resumed", "resumed_from_step", "out_dir"}
)


def qadv_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "qadv.cli", *args]


def _newest_mtime(folder: Path) -> float:
    times = [p.stat().st_mtime for p in folder.rglob("*") if p.is_file()]
    return max(times, default=0.0)


def kill_midway(argv: list[str], cwd: Path, *, delay: float, timeout: float = 300.0) -> bool:
    """Start ``argv`` in ``cwd``, wait until it writes its first file there, then sleep
    ``delay`` seconds and SIGKILL it. True iff the kill landed (the command had not
    finished by then)."""
    before = _newest_mtime(cwd)
    # no persistent compilation cache: a warm one can finish the command before any kill
    env = {**os.environ, "QADV_COMPILE_CACHE": "0"}
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    t0 = time.monotonic()
    try:
        while proc.poll() is None and _newest_mtime(cwd) <= before:
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"{argv} wrote nothing in {timeout}s")
            time.sleep(0.02)
        time.sleep(delay)
        if proc.poll() is not None:
            err = proc.stderr.read().decode()
            assert proc.returncode == 0, f"{argv} failed before the kill: {err[-2000:]}"
            return False
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        return proc.returncode == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stderr.close()


def strip_varying(value):
    """``value`` (parsed JSON) without the :data:`VARYING` fields, recursively."""
    if isinstance(value, dict):
        return {
            k: strip_varying(v)
            for k, v in value.items()
            if k not in VARYING and not k.endswith("time_s")
        }
    if isinstance(value, list):
        return [strip_varying(v) for v in value]
    return value


def _bitwise() -> bool:
    """Runs repeat bit for bit on a CPU; GPU reductions are not deterministic run to run."""
    import jax

    return jax.default_backend() == "cpu"


def _close(a, b) -> bool:
    """Equal JSON up to float32 rounding of the numbers (relative 1e-5)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(u, v) for u, v in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return bool(np.isclose(a, b, rtol=1e-5, atol=1e-7))
    return a == b


def _first_difference(a, b, path: str = "") -> str:
    """Where two parsed JSON values first differ, and the two values there."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{path}.{k}")
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (u, v) in enumerate(zip(a, b, strict=True)):
            if u != v:
                return _first_difference(u, v, f"{path}[{i}]")
    return f"{path or '.'}: {str(a)[:200]!r} != {str(b)[:200]!r}"


def load_json_lines(path: Path):
    if path.suffix == ".jsonl":
        return [json.loads(s) for s in path.read_text().splitlines()]
    return json.loads(path.read_text())


def assert_same_json_files(ref: Path, got: Path, pattern: str = "*.json*") -> int:
    """Every JSON/JSONL file under ``ref`` exists under ``got`` with the same content up to
    :data:`VARYING`; no ``.partial.npz`` is left under ``got``. Returns the files compared.

    Checkpoint folders are skipped: their ``checksums.json`` hashes orbax's files, which
    hold save times and random names (:func:`assert_same_checkpoint` compares them)."""
    from qadv import checkpoint

    files = sorted(
        p.relative_to(ref)
        for p in ref.rglob(pattern)
        if p.suffix in (".json", ".jsonl") and checkpoint.CHECKPOINT_SUBDIR not in p.parts
    )
    assert files, f"no JSON files under {ref}"
    for rel in files:
        a, b = strip_varying(load_json_lines(ref / rel)), strip_varying(load_json_lines(got / rel))
        if _bitwise():
            assert a == b, f"{rel} differs after kill and resume at {_first_difference(a, b)}"
        else:
            assert _close(a, b), f"{rel} differs after kill and resume beyond float32 rounding"
    assert not list(got.rglob("*.partial.npz")), "a finished run left partial results"
    return len(files)


def assert_same_checkpoint(ref: Path, got: Path) -> None:
    """Same latest step, bitwise equal variables, same metadata."""
    import jax

    from qadv import checkpoint

    steps_ref = checkpoint.complete_steps(ref / "checkpoints")
    steps_got = checkpoint.complete_steps(got / "checkpoints")
    assert steps_ref[-1] == steps_got[-1]
    a, b = checkpoint.load_checkpoint(ref), checkpoint.load_checkpoint(got)
    if _bitwise():
        jax.tree.map(np.testing.assert_array_equal, a.variables, b.variables)
    else:  # GPU reductions are not deterministic run to run: float32 rounding apart
        jax.tree.map(
            lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-7),
            a.variables,
            b.variables,
        )
    assert strip_varying(a.metadata) == strip_varying(b.metadata)
