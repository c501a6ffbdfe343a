"""Shared helpers of the performance benchmarks in ``benchmarks/perf/``.

Every benchmark script there is ``main(argv) -> dict``: it parses its options, builds
its models (:func:`load_bench`), times the real public code path (:func:`time_calls`:
one warm-up call per function, which compiles, then ``repeats`` rounds taken
round-robin so that load drifts hit every function alike; median and min reported),
prints a short table and writes one JSON record (:class:`Record`: git commit and
dirtiness, hostname-free machine information, the command line, wall time, the 1-minute
load average before and after).

It also holds the slow reference of the HNS β search (:func:`naive_hns_beta`, which
forms the ``N x N`` input Hessian at every grid point) and the toy ReLU CNN of the older
``benchmarks/bench_attacks.py`` and ``benchmarks/bench_protocol.py``, which import them
from here.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import math
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from qadv import records

ROOT = Path(__file__).resolve().parents[2]
RESULTS_DIR = Path("results") / "perf"

# ------------------------------------------------------------------------ provenance


def git_state() -> dict[str, Any]:
    """``{"commit": sha, "dirty": bool}`` of the checkout (``results/`` and ``runs/`` are
    outputs and do not count; untracked, non-ignored files do), or ``"unknown"``."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
        changes = git("status", "--porcelain", "--", ".", ":!results", ":!runs")
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown", "dirty": None}
    return {"commit": sha, "dirty": bool(changes)}


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def total_memory_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:
        return None


def available_memory_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return None


def machine_info() -> dict[str, Any]:
    """Hardware and software the numbers were taken on (no host name)."""
    import jaxlib

    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": None if affinity is None else len(affinity),
        "memory_bytes": total_memory_bytes(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "jax_version": jax.__version__,
        "jaxlib_version": jaxlib.__version__,
        "backend": jax.default_backend(),
        "devices": [str(getattr(d, "device_kind", d)) for d in jax.devices()],
        "device_count": jax.device_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


class Record:
    """Provenance around one benchmark run: create at the start, :meth:`finish` at the end.

    ``argv`` is the script's arguments (``None``: ``sys.argv[1:]``).

    Example:
        >>> rec = Record("demo", ["--batch", "8"])
        >>> out = rec.finish({"rows": []})
        >>> out["command"], sorted(out["load_average_1min"])
        ('python benchmarks/perf/demo.py --batch 8', ['after', 'before'])
    """

    def __init__(self, part: str, argv: Sequence[str] | None):
        self.part = part
        argv = sys.argv[1:] if argv is None else list(argv)
        self.command = f"python benchmarks/perf/{part}.py " + shlex.join(argv)
        self.command = self.command.strip()
        self.load_before = os.getloadavg()[0]
        self.t0 = time.perf_counter()

    def finish(self, results: dict[str, Any]) -> dict[str, Any]:
        return {
            "benchmark": self.part,
            "command": self.command,
            "git": git_state(),
            "machine": machine_info(),
            "wall_time_s": time.perf_counter() - self.t0,
            "load_average_1min": {
                "before": round(self.load_before, 2),
                "after": round(os.getloadavg()[0], 2),
            },
            "peak_rss_bytes": peak_rss_bytes(),
            **results,
        }

    def save(self, results: dict[str, Any], out: str | os.PathLike) -> dict[str, Any]:
        """:meth:`finish`, written to ``out`` as JSON; returns the record."""
        record = self.finish(results)
        records.atomic_write_json(out, record)
        log(f"wrote {out}")
        return record

    def import_peer(self, module: str, missing: str, out: str | os.PathLike):
        """``(module, None)`` for an optional peer library, or, where it is not installed,
        ``(None, record)``: ``missing`` printed and saved to ``out`` as ``skipped``."""
        try:
            return importlib.import_module(module), None
        except ImportError:
            print(missing)
            return None, self.save({"skipped": missing}, out)


def parser(part: str, doc: str | None, *, checkpoint: bool = True) -> argparse.ArgumentParser:
    """An argument parser with the options the parts share: ``--out``, ``--repeats`` and
    (with ``checkpoint``) ``--checkpoint``, which is for the ``cnn`` model only."""
    p = argparse.ArgumentParser(
        prog=f"benchmarks/perf/{part}.py",
        description=(doc or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", default=str(RESULTS_DIR / f"{part}.json"), help="JSON record")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds after the warm-up")
    if checkpoint:
        p.add_argument(
            "--checkpoint",
            default=None,
            help="run folder of the trained cnn, e.g. runs/fmnist_cnn4_bnn_wq (else random init)",
        )
    return p


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def print_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """An aligned plain-text table on stdout (floats with two decimals)."""
    print(records.format_table(list(header), [list(r) for r in rows], markdown=False))


def fmt(v: float | None, digits: int = 3) -> str:
    """A number with ``digits`` significant digits, ``-`` for ``None``."""
    return "-" if v is None else f"{v:.{digits}g}"


# ---------------------------------------------------------------------------- timing


BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def count_compiles():
    """Collect the names of the XLA programs compiled inside the block.

    Listens to JAX's monitoring event for backend compilations (one per program XLA
    compiles: a jitted function at a new shape, or a small op-by-op computation).

    Example:
        >>> with count_compiles() as names:
        ...     _ = jax.jit(lambda v: v * 3.0)(jnp.ones(7)).block_until_ready()
        >>> len(names) >= 1
        True
    """
    names: list[str] = []

    def listener(event: str, duration: float, **kwargs) -> None:
        if event == BACKEND_COMPILE_EVENT:
            names.append(str(kwargs.get("fun_name", "?")))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield names
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


@dataclasses.dataclass
class Timing:
    """One function's timing: the warm-up (compiling) call and the timed calls after it.

    ``compiles_first_call`` counts the XLA compilations during the warm-up call,
    ``compiles_second_call`` those during the next call (the first timed one) and
    ``compiles_later_calls`` those during all timed calls: 0 when nothing recompiles.
    ``result`` is what the warm-up call returned.
    """

    first_call_s: float
    times_s: list[float]
    compiles_first_call: int
    compiles_second_call: int
    compiles_later_calls: int
    result: Any = dataclasses.field(default=None, repr=False)

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    @property
    def min_s(self) -> float:
        return min(self.times_s)

    def as_dict(self, items: int | None = None) -> dict[str, Any]:
        """JSON form; with ``items`` (images per call) also images per second."""
        out = {
            "median_s": self.median_s,
            "min_s": self.min_s,
            "times_s": self.times_s,
            "first_call_s": self.first_call_s,
            "compiles_first_call": self.compiles_first_call,
            "compiles_second_call": self.compiles_second_call,
            "compiles_later_calls": self.compiles_later_calls,
        }
        if items is not None:
            out["images_per_s"] = items / self.median_s
            out["images_per_s_best"] = items / self.min_s
        return out


def time_calls(
    fns: Sequence[Callable[[], Any]],
    repeats: int,
    *,
    warmups: Sequence[Callable[[], Any]] | None = None,
) -> list[Timing]:
    """Warm up (compile) each function once, then time ``repeats`` round-robin rounds.

    Every call is followed by ``jax.block_until_ready`` on its result. Round-robin
    rounds make a drift in machine load hit every function alike, so ratios between
    them are fairer than back-to-back blocks. ``warmups[i]``, if given, is called instead
    of ``fns[i]`` to warm up (e.g. one example of a round that attacks many); each
    ``Timing.result`` is then what the last timed call of ``fns[i]`` returned.

    Example:
        >>> f = jax.jit(lambda v: v + 1.0)
        >>> (t,) = time_calls([lambda: f(jnp.ones(3))], repeats=2)
        >>> len(t.times_s), t.compiles_later_calls
        (2, 0)
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    out = []
    for warm in fns if warmups is None else warmups:
        with count_compiles() as names:
            t0 = time.perf_counter()
            result = jax.block_until_ready(warm())
            seconds = time.perf_counter() - t0
        out.append(Timing(seconds, [], len(names), 0, 0, result))
    for r in range(repeats):
        for fn, timing in zip(fns, out, strict=True):
            with count_compiles() as names:
                t0 = time.perf_counter()
                result = jax.block_until_ready(fn())
                timing.times_s.append(time.perf_counter() - t0)
            timing.compiles_later_calls += len(names)
            if r == 0:
                timing.compiles_second_call = len(names)
            if warmups is not None:
                timing.result = result
    return out


# ---------------------------------------------------------------------------- memory


def rss_bytes() -> int:
    """Resident set size of this process now."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (``ru_maxrss``; KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) * (1 if sys.platform == "darwin" else 1024)


class RSSSampler:
    """Samples this process's RSS in a background thread while the block runs.

    Attributes (after the block): ``start`` (RSS on entry), ``peak`` (largest sample,
    entry and exit included), ``end`` (RSS on exit).

    Example:
        >>> with RSSSampler(interval_s=0.001) as s:
        ...     _ = bytearray(1 << 20)
        >>> s.peak >= s.start > 0
        True
    """

    def __init__(self, interval_s: float = 0.005):
        self.interval_s = interval_s
        self.start = self.peak = self.end = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> RSSSampler:
        self.start = self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.end = rss_bytes()
        self.peak = max(self.peak, self.end)


def device_memory() -> dict[str, int] | None:
    """``jax.devices()[0].memory_stats()`` (``None`` where the backend has none, e.g. CPU)."""
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # some backends raise instead of returning None
        return None
    return None if not stats else {k: int(v) for k, v in stats.items()}


MEMORY_FIELDS = (
    "temp_size_in_bytes",
    "argument_size_in_bytes",
    "output_size_in_bytes",
    "alias_size_in_bytes",
    "generated_code_size_in_bytes",
)


def memory_analysis(compiled) -> dict[str, int] | None:
    """XLA's memory analysis of a compiled program (``None`` if the backend has none)."""
    try:
        ma = compiled.memory_analysis()
    except Exception:
        return None
    if ma is None:
        return None
    return {k: int(getattr(ma, k)) for k in MEMORY_FIELDS if hasattr(ma, k)}


def fits_in_memory(analysis: dict[str, int] | None, fraction: float = 0.7) -> bool:
    """Whether a program's temporaries + arguments + outputs fit in ``fraction`` of the
    memory available now (unknown sizes are assumed to fit)."""
    avail = available_memory_bytes()
    if analysis is None or avail is None:
        return True
    need = sum(analysis.get(k, 0) for k in MEMORY_FIELDS[:3])
    return need <= fraction * avail


def gib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f} GiB"


# ---------------------------------------------------------------------------- models

# Each benchmark model: its image shape, its quantization policy when random-init
# (the ``cnn`` stand-in keeps the policy of runs/fmnist_cnn4_bnn_wq; random-init binary
# ResNets have logits of ~1e24, so the 32x32x3 models are float), and the L-inf radius.
MODELS: dict[str, dict[str, Any]] = {
    "cnn": {"arch": "cnn", "image_shape": (28, 28, 1), "policy": "bnn_wq", "eps": 0.1},
    # the demo's BNN-WQ MLP (3 x 1024 hidden units)
    "mlp": {
        "arch": "mlp",
        "image_shape": (28, 28, 1),
        "policy": "bnn_wq",
        "eps": 0.1,
        "opts": {"widths": (1024, 1024, 1024)},
    },
    "cnn32": {"arch": "cnn", "image_shape": (32, 32, 3), "policy": "ref", "eps": 8 / 255},
    "resnet18": {
        "arch": "resnet18",
        "image_shape": (32, 32, 3),
        "policy": "ref",
        "eps": 8 / 255,
    },
}


@dataclasses.dataclass
class Bench:
    """A model and data to time it on.

    Attributes:
        name: a key of :data:`MODELS`.
        logits_fn: the eval-mode logits function (a ``jax.tree_util.Partial``).
        x: ``(n, H, W, C)`` float32 images in ``[0, 1]``.
        y: ``(n,)`` int32 labels.
        eps: the L-inf radius used for this model (0.1 on 28x28x1, 8/255 on 32x32x3).
        info: what the model and data are (for the JSON record).
    """

    name: str
    logits_fn: Any
    x: np.ndarray
    y: np.ndarray
    eps: float
    info: dict[str, Any]

    def batch(self, b: int) -> tuple[jax.Array, jax.Array]:
        """The first ``b`` examples (the data repeated if it has fewer)."""
        reps = -(-b // len(self.x))
        x = np.concatenate([self.x] * reps)[:b] if reps > 1 else self.x[:b]
        y = np.concatenate([self.y] * reps)[:b] if reps > 1 else self.y[:b]
        return jnp.asarray(x), jnp.asarray(y)


def _fmnist_test(n: int) -> np.ndarray | None:
    """The first ``n`` Fashion-MNIST test images as float32, or ``None`` if not installed."""
    try:
        from qadv import data

        xs, _ = data.load_split("fashion_mnist", "test")
    except ValueError:
        return None
    return xs[:n].astype(np.float32) / np.float32(255.0)


def load_bench(
    name: str,
    *,
    n: int,
    checkpoint: str | None = None,
    classes: int = 10,
    seed: int = 0,
) -> Bench:
    """Build a benchmark model and ``n`` examples.

    ``checkpoint`` (a run folder, only for ``name="cnn"``) loads the trained model and
    the real test images and labels of its dataset. Otherwise the architecture of
    :data:`MODELS` is initialised at random (``seed``), in eval mode, with ``classes``
    outputs; its images are real Fashion-MNIST test images where they fit (28x28x1, and
    installed) and uniform random ones otherwise, and its labels are its own predictions,
    so that every example is clean-correct and gets attacked.

    Example:
        >>> b = load_bench("cnn", n=2)
        >>> b.x.shape, b.info["model"], b.eps, bool((predictions(b.logits_fn, b.x) == b.y).all())
        ((2, 28, 28, 1), 'random-init', 0.1, True)
    """
    if name not in MODELS:
        raise ValueError(f"unknown benchmark model {name!r}; choose one of: {', '.join(MODELS)}")
    spec = MODELS[name]
    if checkpoint is not None:
        if name != "cnn":
            raise ValueError(f"--checkpoint is for the cnn model, not {name!r}")
        return _load_checkpoint_bench(name, checkpoint, n)

    from qadv.models import get_model, init_variables, make_logits_fn
    from qadv.quant import get_policy

    shape = tuple(spec["image_shape"])
    policy = get_policy(spec["policy"])
    model = get_model(spec["arch"], num_classes=classes, policy=policy, **spec.get("opts", {}))
    variables = init_variables(model, key=jax.random.key(seed), input_shape=shape)
    f = make_logits_fn(model, variables)
    x = _fmnist_test(n) if shape == (28, 28, 1) else None
    data_desc = "fashion_mnist test images (labels: model predictions)"
    if x is None or len(x) < n:
        rng = np.random.default_rng(seed)
        x = rng.uniform(size=(n, *shape)).astype(np.float32)
        data_desc = "uniform random images (labels: model predictions)"
    y = predictions(f, x)
    info = {
        "name": name,
        "arch": spec["arch"],
        "model": "random-init",
        "policy": spec["policy"],
        "classes": classes,
        "image_shape": list(shape),
        "data": data_desc,
        "eval_mode": True,
        "eps": spec["eps"],
    }
    return Bench(name, f, x, y, spec["eps"], info)


def predictions(f, x, batch: int = 256) -> np.ndarray:
    """``argmax f(x)`` as int32, through ``qadv.evaluate.clean_predictions``."""
    from qadv.evaluate import clean_predictions

    x = np.asarray(x)
    return clean_predictions(f, x, batch_size=min(batch, len(x)))


def _load_checkpoint_bench(name: str, checkpoint: str, n: int) -> Bench:
    from qadv import data
    from qadv.checkpoint import load_checkpoint

    loaded = load_checkpoint(checkpoint)
    meta = loaded.metadata
    f = loaded.logits_fn
    xs, ys = data.load_split(meta["dataset"], "test")
    reps = -(-n // len(xs))
    x = np.concatenate([xs] * reps)[:n].astype(np.float32) / np.float32(255.0)
    y = np.concatenate([ys] * reps)[:n].astype(np.int32)
    eps = 0.1 if meta["dataset"] in ("fashion_mnist", "mnist") else 8 / 255
    clean = float(np.mean(predictions(f, x) == y))
    info = {
        "name": name,
        "arch": meta["arch"],
        "model": str(checkpoint),
        "policy": meta["policy"]["kind"],
        "classes": int(meta["num_classes"]),
        "image_shape": list(meta["image_shape"]),
        "data": f"{meta['dataset']} test images, first {n}" + (" (repeated)" if reps > 1 else ""),
        "labels": "true labels",
        "clean_accuracy_on_data": clean,
        "eval_mode": True,
        "eps": eps,
    }
    return Bench(name, f, x, y, eps, info)


def toy_cnn(key, image_shape: Sequence[int] = (32, 32, 3), classes: int = 10):
    """A small ReLU CNN on [0, 1] images: conv16/s2 - conv32/s2 - dense ``classes``.

    Weights ``N(0, 1/fan_in)`` (the last layer 4x larger); the synthetic model of
    ``bench_attacks.py`` (32x32x3) and ``bench_protocol.py`` (28x28x1).

    Example:
        >>> f = toy_cnn(jax.random.key(0), (28, 28, 1))
        >>> f(jnp.zeros((2, 28, 28, 1))).shape
        (2, 10)
    """
    h, w, c = (int(s) for s in image_shape)
    flat = -(-h // 4) * -(-w // 4) * 32
    k1, k2, k3 = jax.random.split(key, 3)
    w1 = jax.random.normal(k1, (3, 3, c, 16), jnp.float32) * float(1 / math.sqrt(9 * c))
    w2 = jax.random.normal(k2, (3, 3, 16, 32), jnp.float32) * float(1 / math.sqrt(144))
    w3 = jax.random.normal(k3, (flat, classes), jnp.float32) * float(4 / math.sqrt(flat))
    dn = ("NHWC", "HWIO", "NHWC")

    def logits_fn(x):
        z = jax.lax.conv_general_dilated(x - 0.5, w1, (2, 2), "SAME", dimension_numbers=dn)
        z = jax.nn.relu(z)
        z = jax.lax.conv_general_dilated(z, w2, (2, 2), "SAME", dimension_numbers=dn)
        return jax.nn.relu(z).reshape(x.shape[0], -1) @ w3

    return logits_fn


# ------------------------------------------------------------- naive HNS reference


def as_partial(f):
    """``f`` as a ``jax.tree_util.Partial`` (a pytree, so jitted helpers take it as an
    argument: its arrays are not baked in, and equal models share compilations)."""
    return f if isinstance(f, jax.tree_util.Partial) else jax.tree_util.Partial(f)


@jax.jit
def _jac_one(f, x):
    """``(d, N)`` Jacobian of one example ``x (H, W, C)``."""
    jac = jax.jacrev(lambda z: f(z[None])[0])(x)
    return jac.reshape(jac.shape[0], -1)


@jax.jit
def _naive_norm(jac, a, beta):
    """``||beta^2 J^T S J||_F`` with the ``N x N`` input Hessian formed explicitly."""
    p = jax.nn.softmax(beta * a)
    s = jnp.diag(p) - jnp.outer(p, p)
    hess = beta * beta * (jac.T @ s @ jac)  # N x N
    return jnp.sqrt(jnp.sum(hess * hess))


def naive_hns_beta(logits_fn, x, y, grid_size: int = 100) -> float:
    """The HNS grid rule for one example, the slow way (like the authors' release).

    One Jacobian, then at each of the ``grid_size`` temperatures the ``N x N`` input
    Hessian ``beta^2 J^T S J`` of the cross-entropy is formed and its Frobenius norm taken
    (piecewise-linear network: curvature term dropped). The grid runs over Proposition
    1's ``beta`` from ``rho = 1 - 1/d - 0.01`` to ``rho = 1e-72`` (float64 constants); the
    argmax is returned, or 1 at an end point or if ``x`` is misclassified.

    Example:
        >>> f = lambda v: v.reshape(v.shape[0], -1) @ jnp.array([[2.0, -1.0, 0.5]])
        >>> naive_hns_beta(f, jnp.ones((1, 1, 1)), 0) > 0
        True
    """
    f = as_partial(logits_fn)
    a = np.asarray(f(jnp.asarray(x)[None])[0], np.float64)
    if int(np.argmax(a)) != int(y):
        return 1.0
    top = np.sort(a)[::-1]
    gap, d = top[0] - top[1], a.size

    def bound(rho):
        return (-math.log(rho) + math.log1p(-rho) + math.log(d - 1)) / gap

    grid = np.linspace(bound(1 - 1 / d - 0.01), bound(1e-72), grid_size)
    jac = _jac_one(f, jnp.asarray(x))  # computed once, like the release
    a32 = jnp.asarray(a, jnp.float32)
    norms = [float(_naive_norm(jac, a32, jnp.float32(b))) for b in grid]
    k = int(np.argmax(norms))
    return 1.0 if k in (0, grid_size - 1) else float(grid[k])
