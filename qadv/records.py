"""Provenance, result files, tables and plots shared by the CLI and the experiments.

Everything here is plain Python/numpy: no JAX tracing, no model code.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qadv.validation import parse_fraction  # re-exported: its home is qadv.validation

__all__ = [
    "CompileClock",
    "atomic_write_json",
    "cached_json",
    "check_output_path",
    "cpu_info",
    "environment",
    "format_table",
    "git_commit",
    "library_versions",
    "parse_fraction",
    "plot_curves",
    "read_json",
    "results_table",
]


def git_commit(path: str | os.PathLike | None = None) -> str:
    """The current git commit of the qadv checkout (``+dirty`` if its code is modified; files
    under ``results/`` and ``runs/`` are outputs and do not count), or ``"unknown"``."""
    cwd = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            # results/ and runs/ hold outputs (committed results included), not code
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":!results",
                ":!runs",
            ],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def cpu_info() -> dict[str, Any]:
    """The CPU's model name and the instruction-set features that change XLA's CPU code
    (and so its float rounding): AVX, AVX2, AVX-512, FMA, AMX, NEON/SVE."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model") and model in ("", platform.machine()):
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    wanted = (
        "avx",
        "avx2",
        "fma",
        "avx512f",
        "avx512bw",
        "avx512_bf16",
        "avx512_vnni",
        "amx_bf16",
        "amx_tile",
        "asimd",
        "sve",
        "sve2",
    )
    return {"cpu_model": model, "cpu_features": [f for f in wanted if f in flags]}


def library_versions() -> dict[str, str]:
    """Versions of the libraries a result depends on (``"-"`` where not installed)."""
    from importlib import metadata

    out = {}
    for name in ("jax", "jaxlib", "flax", "optax", "numpy", "scipy", "orbax-checkpoint"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "-"
    return out


def environment() -> dict[str, Any]:
    """Hardware and software provenance recorded with every result: device kind, the
    precision policy (:mod:`qadv.precision`), CPU features, XLA flags and library
    versions, all of which can change float rounding."""
    import jax

    from qadv import __version__, precision

    devices = jax.devices()
    return {
        "qadv_version": __version__,
        "git_commit": git_commit(),
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(getattr(d, "device_kind", d)) for d in devices],
        "device_count": len(devices),
        "matmul_precision": precision.current(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        **cpu_info(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "libraries": library_versions(),
        "python": platform.python_version(),
    }


def check_output_path(path: str | os.PathLike, *, folder: bool | None = None) -> None:
    """Refuse an output path that cannot be written, before any work starts: a one-line
    ``ValueError`` naming it. ``folder=True``/``False`` also requires it to be (or become)
    a folder / a file; ``None`` accepts either."""
    path = Path(path)
    if folder is False and path.is_dir():
        raise ValueError(f"cannot write {path}: it is a folder; give a file name")
    if folder is True and path.exists() and not path.is_dir():
        raise ValueError(f"cannot write into {path}: it is a file, not a folder")
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent != path and not parent.is_dir():
        raise ValueError(f"cannot write {path}: {parent} is a file, not a folder")
    folder_to_write = parent if parent != path or path.is_dir() else path.parent
    try:  # a real write: permissions, read-only file systems, full disks
        with tempfile.TemporaryFile(dir=folder_to_write):
            pass
        if path.is_file():
            with open(path, "ab"):
                pass
    except OSError as e:
        raise ValueError(f"cannot write {path}: {e.strerror or type(e).__name__}") from None


_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


class CompileClock:
    """Seconds JAX spent tracing, lowering and compiling inside a ``with`` block, and the
    number of XLA programs compiled (from JAX's monitoring events), so a record can state
    its compile time apart from its run time.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> with CompileClock() as clock:
        ...     _ = jax.jit(lambda v: v * 5.0)(jnp.ones(3)).block_until_ready()
        >>> clock.programs >= 1 and clock.seconds > 0
        True
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self.programs = 0

    def _listen(self, event: str, duration: float, **kwargs) -> None:
        if event in _COMPILE_EVENTS:
            self.seconds += float(duration)
            self.programs += event == _COMPILE_EVENTS[-1]

    def __enter__(self) -> CompileClock:
        import jax

        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def __exit__(self, *exc) -> None:
        import jax

        jax.monitoring.unregister_event_duration_listener(self._listen)

    def as_dict(self, wall_s: float) -> dict[str, float]:
        """``{"wall_time_s", "compile_time_s", "run_time_s", "programs_compiled"}``."""
        return {
            "wall_time_s": wall_s,
            "compile_time_s": self.seconds,
            "run_time_s": max(wall_s - self.seconds, 0.0),
            "programs_compiled": self.programs,
        }


def atomic_write_json(path: str | os.PathLike, data: Mapping[str, Any]) -> None:
    """Write JSON so that a kill mid-write never leaves a truncated file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False, default=_json_default)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cached_json(path: str | os.PathLike | None, params: Mapping[str, Any], compute) -> Any:
    """``compute()``, saved to ``path`` as JSON with a hash of ``params``; a later call with
    the same ``params`` (include a data fingerprint) reads it back instead of recomputing.
    ``path=None`` always computes. Returns the JSON form of the value either way."""
    key = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()
    if path is not None and Path(path).exists():
        try:
            saved = read_json(path)
            if saved.get("key") == key:
                return saved["value"]
        except (OSError, ValueError, KeyError):
            pass
    value = compute()
    if path is not None:
        atomic_write_json(path, {"key": key, "params": params, "value": value})
    return json.loads(json.dumps(value, default=_json_default))


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def format_table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], *, markdown: bool = True
) -> str:
    """Format rows as a Markdown (or plain, aligned) table; floats get two decimals.

    Example:
        >>> print(format_table(["model", "pgd"], [["ref", 1.234]]))
        | model | pgd |
        |---|---|
        | ref | 1.23 |
    """
    cells = [[_cell(v) for v in row] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in cells]
        return "\n".join(lines)
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    fmt = "  ".join("{:>" + str(w) + "}" for w in widths)
    return "\n".join([fmt.format(*header), *(fmt.format(*r) for r in cells)])


def _cell(v: Any) -> str:
    if isinstance(v, float | np.floating):
        return f"{float(v):.2f}"
    return str(v)


def plot_curves(
    path: str | os.PathLike,
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    logx: bool = False,
    logy: bool = False,
) -> None:
    """Save a line plot of named (x, y) curves as PNG (headless backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.0), dpi=120)
    for label, (xs, ys) in curves.items():
        ax.plot(np.asarray(xs), np.asarray(ys), marker="." if len(xs) < 40 else None, label=label)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # no warning for a plot without curves
        ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _flat_settings(rec: dict) -> dict[str, str]:
    """A result's settings as ``{dotted name: value}``: its attack config (an ensemble's
    radius), and its seed."""
    out = {"seed": json.dumps(rec.get("seed"))}

    def walk(prefix: str, v: Any) -> None:
        if isinstance(v, dict):
            for k, w in v.items():
                walk(f"{prefix}{k}.", w)
        else:
            out[prefix[:-1]] = json.dumps(v, sort_keys=True)

    walk("", rec.get("config", {"eps": rec.get("eps")}))
    return out


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _setting_columns(found: list[dict]) -> list[str]:
    """Each result's column name: its attack label, plus the settings in which it
    differs from the other results of that label (``PGD L∞ (steps=50)``)."""
    settings = [_flat_settings(r) for r in found]
    differing: dict[str, list[str]] = {}
    for label in {r["attack"] for r in found}:
        group = [s for s, r in zip(settings, found, strict=True) if r["attack"] == label]
        keys = sorted({k for s in group for k in s})
        differing[label] = [k for k in keys if len({s.get(k) for s in group}) > 1]
    names = []
    for s, r in zip(settings, found, strict=True):
        keys = differing[r["attack"]]
        extra = ", ".join(
            f"{k.split('.')[-1]}={_short(json.loads(s.get(k, 'null')))}" for k in keys
        )
        names.append(f"{r['attack']} ({extra})" if extra else r["attack"])
    return names


def results_table(folder: str | os.PathLike, *, wall_time: bool = False) -> str:
    """A Table-2/Table-5-style Markdown table of every result JSON in ``folder``.

    Rows are checkpoints, columns attacks (in the paper's order where known, then
    alphabetical; ensembles last), cells robust accuracy in percent (or, with
    ``wall_time``, seconds); ``n`` and a ``clean`` column come first. A checkpoint
    evaluated on other images (another ``n`` or clean accuracy) gets a row of its own (a
    result without a checkpoint is named by its model fingerprint, else its file), and
    runs of one attack that differ in their settings get a column each, named by what
    differs (``PGD L∞ (eps=0.1)``, ``PGD L∞ (steps=50)``). Two results that would fill
    the same cell with different numbers are refused (one line naming both files), never
    one of them dropped.
    """
    found = []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            rec = read_json(path)
        except (OSError, ValueError):
            continue
        if "adversarial_accuracy" in rec and ("config" in rec or "ensemble" in rec):
            if "ensemble" in rec:
                rec = {**rec, "attack": f"ensemble: {rec['ensemble']}"}
            found.append((path, rec))
    if not found:
        raise ValueError(f"no attack results (*.json with adversarial_accuracy) in {folder}")
    order = [
        "FGSM L∞", "FGSM++ (NJS) L∞", "FGSM++ (HNS) L∞",
        "PGD L∞", "PGD++ (NJS) L∞", "PGD++ (HNS) L∞",
        "PGD L2", "PGD++ (NJS) L2", "PGD++ (HNS) L2",
        "APGD-CE L∞", "APGD-DLR L∞", "APGD-T L∞", "Square L∞", "FAB-T L∞", "DeepFool L∞",
    ]  # fmt: skip

    def rank(column: str):
        a = column if column in order else column.rsplit(" (", 1)[0]  # without settings
        return (column.startswith("ensemble"), order.index(a) if a in order else len(order), column)

    columns = _setting_columns([r for _, r in found])
    rows: dict[tuple, dict[str, tuple]] = {}
    for (path, r), col in zip(found, columns, strict=True):
        fp = r.get("model_fingerprint")
        name = str(r.get("checkpoint") or (f"model {fp[:8]}" if fp else path.stem))
        row = rows.setdefault((name, r["n"], r["clean_accuracy"]), {})
        value = r["wall_time_s"] if wall_time else r["adversarial_accuracy"]
        if col in row and row[col][1] != value:
            raise ValueError(
                f"{row[col][0].name} and {path.name} both hold {col} on {name} "
                f"(n={r['n']}) with different results; put them in separate folders"
            )
        row[col] = (path, value)
    labels = sorted(set(columns), key=rank)
    body = [
        [name, n, clean, *(row[c][1] if c in row else "–" for c in labels)]
        for (name, n, clean), row in rows.items()
    ]
    return format_table(["checkpoint", "n", "clean", *labels], body)
