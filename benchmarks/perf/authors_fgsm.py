"""FGSM and FGSM++ (NJS, HNS) per example: qadv against the authors' PyTorch release.

The cost column of Gupta & Ajanthan's Table 7 ("Improved gradient based adversarial
attacks for quantized networks": FGSM 0.01492 s, FGSM++ NJS 0.01604 s, FGSM++ HNS
0.0932 s per example, ResNet-18, batch 1, RTX 2080) measured here for both
implementations on the same machine, network, weights and images, at batch size 1:

- qadv: ``qadv.attacks.fgsm`` (random start, one step of ε), with
  ``temperature=attacks.njs(f, x_calib)`` (NJS) or ``attacks.hns()`` (HNS, 100-point grid),
  on qadv's ``resnet18``; each call is one compiled program, compiled by a warm-up call
  and then reused, ended by ``jax.block_until_ready``;
- the release (kartikgupta-at-anu/attack-bnn, checked out with a work tree at
  ``--release DIR``): its own ``quant_adversarial.fgsm_attack.fgsm`` and
  ``modified_fgsm`` with ``args.modified_attack_technique`` =
  ``'TS_gradthresh_MJSVnetwork'`` (NJS) or ``'Beta_NonLinearity_hessorig'`` (HNS: per
  example ``utils.visualise_adv.jacobian_faster`` and a 100-point β grid that forms the
  3072×3072 input Hessian at every point), imported from ``DIR`` and called as the
  release's ``METHODS.evaluate_adv`` calls them (``pytorch_range`` [0, 1] per channel,
  ``step_size`` = ``epsil`` = ε = 8/255 per channel), on a PyTorch ResNet-18 in eval mode
  that computes qadv's network with the same weights (``torch_pgd.torch_resnet18``; the
  two networks' logits are checked to agree before anything is timed).

The network is qadv's float ResNet-18 (CIFAR stem, ``ref`` policy) at random init, as in
``torch_pgd.py`` (a random-init binary ResNet-18 has logits of ~1e24); the arithmetic per
attack is the same as for a BNN-WQ network. Images: uniform random 32×32×3, labelled
with the network's own predictions, so every example is clean-correct.

NJS's ``sp_scalar`` (the mean singular value of the input-output Jacobian) is, in the
release, computed once per evaluation by ``METHODS._METHODS.jacobian_io`` over the first
101 test images at batch 1, before the attack loop, and then divided into every
example's logits; Table 7's NJS cost (0.01604 s against 0.01492 s for FGSM) therefore
does not include it. Here too it is computed once, outside the timed region, by the
release's own ``jacobian_io`` on the first ``--calib`` (101) images; qadv's ``attacks.njs``
computes its β₁ = 1 / mean singular value on the same images (both are recorded and
should agree; their times are recorded apart, in ``njs``).

Each (attack, side) is warmed up on one example (qadv compiles there), then ``--repeats``
rounds, round-robin over the six (attack, side) pairs, each attacking the ``--n`` examples
one at a time; the seconds per example are a round's wall time / n (median and min over
the rounds). ``release_over_qadv`` = release time / qadv time (> 1: qadv faster).

What is patched in the release at run time (its files are not changed; ``patches`` in
the record lists what was applied):

- ``quant_adversarial/nonlinearity_beta.py`` (``torch.zeros(..., device='cuda')``) and
  ``utils/visualise_adv.py`` (``torch.eye(..., device='cuda')`` in ``jacobian_faster`` and
  ``softmaxjacobian_faster``) hard-code CUDA: without CUDA, the name ``torch`` in those
  two modules is replaced by a proxy that forwards everything to ``torch`` except that
  ``zeros`` and ``eye`` put ``device='cuda'`` on the CPU. The release's ``fgsm`` and
  ``modified_fgsm`` pick ``cuda`` if available else ``cpu`` themselves.
- ``torchvision`` (imported by ``fgsm_attack.py`` and ``l2_pgd_attack.py``, unused by the
  attacks), and ``models`` and ``utils.utils`` (imported by ``METHODS.py``, unused by
  ``jacobian_io``; they need torchvision, pandas, bokeh), are stubbed with empty modules
  when they are not importable or, for the last two, always; only while importing.
- ``jacobian_faster`` as seen from ``nonlinearity_beta`` is wrapped by a counter (one
  Python increment per call; on the timed path) so that the record says how many
  examples the release's HNS actually searched (it skips an example whose random start
  is already misclassified).

On a loaded machine PyTorch's default intra-op thread count (one per core) can make
every operator wait for a descheduled OpenMP thread: ResNet-18 at batch 1 was seen to take
0.8 s per forward pass with 2 threads on 2 busy cores against 0.02 s with 1 thread.
``--torch-threads`` sets ``torch.set_num_threads`` (recorded in ``torch_threads``);
compare ``load_average_1min`` before reading the numbers.

PyTorch is optional (``pip install 'qadv[peers]'``; on this project's CPU machines
``pip install torch==2.13.0`` takes the CPU build from disk): without it, or without a
checkout of the release at ``--release``, this prints one line and writes a record that
says ``skipped``.

Run::

    python benchmarks/perf/authors_fgsm.py --release /path/to/attack-bnn --n 10 --repeats 2
"""

from __future__ import annotations

import contextlib
import importlib
import subprocess
import sys
import time
import types
import warnings
from pathlib import Path

import common
import jax
import jax.numpy as jnp
import numpy as np
import torch_pgd

from qadv import attacks

MISSING = "PyTorch is not installed: pip install 'qadv[peers]'"
NO_RELEASE = (
    "no checkout of the authors' release: pass --release DIR, a work tree of "
    "kartikgupta-at-anu/attack-bnn"
)
# files of the release this script imports (and a function each must define)
RELEASE_FILES = {
    "quant_adversarial/fgsm_attack.py": "def modified_fgsm(",
    "quant_adversarial/nonlinearity_beta.py": "def estimate_beta_nonlinearity_hessorig(",
    "quant_adversarial/METHODS.py": "def jacobian_io(",
    "utils/visualise_adv.py": "def jacobian_faster(",
}
RELEASE_TOP = ("quant_adversarial", "utils", "models", "cfgs", "datasets")
TECHNIQUE = {"fgsm++njs": "TS_gradthresh_MJSVnetwork", "fgsm++hns": "Beta_NonLinearity_hessorig"}
ATTACKS = ("fgsm", "fgsm++njs", "fgsm++hns")
PAPER_TABLE7_S = {"fgsm": 0.01492, "fgsm++njs": 0.01604, "fgsm++hns": 0.0932}


def release_problem(path: str | None) -> str | None:
    """Why ``path`` is not a usable checkout of the release (``None`` if it is)."""
    if not path:
        return NO_RELEASE
    root = Path(path)
    for rel, marker in RELEASE_FILES.items():
        f = root / rel
        if not f.is_file():
            return f"{NO_RELEASE} ({root} has no {rel})"
        if marker not in f.read_text(errors="replace"):
            return f"{NO_RELEASE} ({root / rel} defines no {marker.rstrip('(')[4:]})"
    return None


class _DeviceRedirect(types.ModuleType):
    """Stands for ``torch`` in a release module: ``zeros``/``eye`` with ``device='cuda'``
    go to ``device``; every other name is ``torch``'s own."""

    def __init__(self, torch, device: str):
        super().__init__("torch")
        self._torch, self._device = torch, device

    def __getattr__(self, name):
        attr = getattr(self._torch, name)
        if name in ("zeros", "eye"):

            def redirected(*args, **kwargs):
                if str(kwargs.get("device", "")).startswith("cuda"):
                    kwargs["device"] = self._device
                return attr(*args, **kwargs)

            return redirected
        return attr


class _Float64Linspace(types.ModuleType):
    """Stands for ``numpy`` in a release module: ``linspace`` computes in float64 (NumPy
    1.x's result for 0-d float32 end points); every other name is numpy's own."""

    def __init__(self, numpy):
        super().__init__("numpy")
        self._np = numpy

    def __getattr__(self, name):
        if name == "linspace":
            return lambda *a, **k: self._np.linspace(*a, **{"dtype": np.float64, **k})
        return getattr(self._np, name)


@contextlib.contextmanager
def _release_on_path(root: Path, stubs: dict[str, types.ModuleType]):
    """Import from ``root`` with ``stubs`` in ``sys.modules``; afterwards restore
    ``sys.path`` and ``sys.modules`` (the release's top-level names ``utils``, ``models``
    ... are common ones; the imported functions keep their own globals)."""
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in RELEASE_TOP or k in stubs}
    for k in saved:
        del sys.modules[k]
    sys.modules.update(stubs)
    sys.path.insert(0, str(root))
    try:
        yield
    finally:
        sys.path.remove(str(root))
        for k in [k for k in sys.modules if k.split(".")[0] in RELEASE_TOP or k in stubs]:
            del sys.modules[k]
        sys.modules.update(saved)


def load_release(root: Path, device: str) -> tuple[types.SimpleNamespace, list[str]]:
    """The release's ``fgsm``, ``modified_fgsm`` and ``jacobian_io``, patched to run on
    ``device``; and one line per patch applied."""
    import torch

    patches: list[str] = []
    stubs: dict[str, types.ModuleType] = {}
    try:
        import torchvision.transforms  # noqa: F401
    except Exception:
        stubs["torchvision"] = types.ModuleType("torchvision")
        stubs["torchvision.transforms"] = types.ModuleType("torchvision.transforms")
        stubs["torchvision"].transforms = stubs["torchvision.transforms"]
        patches.append(
            "torchvision (imported by fgsm_attack.py and l2_pgd_attack.py, unused by the "
            "attacks) is not importable here: stubbed with an empty module while importing"
        )
    # METHODS.py (for jacobian_io only) imports the release's models and utils.utils,
    # which need torchvision, pandas and bokeh; jacobian_io uses neither.
    for name in ("models", "utils.utils"):
        stubs[name] = types.ModuleType(name)
    patches.append(
        "models and utils.utils (imported by METHODS.py, unused by jacobian_io, which "
        "computes NJS's sp_scalar) stubbed with empty modules while importing METHODS.py"
    )
    # METHODS.py's ``is not ''`` draws a SyntaxWarning (an error under -W error)
    with _release_on_path(root, stubs), warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)
        fgsm_attack = importlib.import_module("quant_adversarial.fgsm_attack")
        beta_mod = importlib.import_module("quant_adversarial.nonlinearity_beta")
        vis = importlib.import_module("utils.visualise_adv")
        methods = importlib.import_module("quant_adversarial.METHODS")
    if not device.startswith("cuda"):
        proxy = _DeviceRedirect(torch, device)
        beta_mod.torch = proxy
        vis.torch = proxy
        patches.append(
            f"no CUDA: the name torch in quant_adversarial/nonlinearity_beta.py and "
            f"utils/visualise_adv.py is a proxy whose zeros() and eye() put device='cuda' "
            f"on {device!r} (torch.zeros(..., device='cuda') in "
            f"estimate_beta_nonlinearity_hessorig, torch.eye(..., device='cuda') in "
            f"jacobian_faster and softmaxjacobian_faster); everything else is torch's own"
        )
    # NumPy >= 2 (NEP 50) keeps np.linspace of two 0-d float32 arrays in float32; NumPy 1.x,
    # which the release was written for, gave float64. A float32 grid point then fails in
    # ``beta_batch[i] = max_hessnorm_beta`` ("can't assign a numpy.float32 to a
    # torch.FloatTensor"; np.float64 is a Python float and is accepted).
    if np.lib.NumpyVersion(np.__version__) >= "2.0.0":
        beta_mod.np = _Float64Linspace(np)
        patches.append(
            "NumPy >= 2: the name np in quant_adversarial/nonlinearity_beta.py is a proxy "
            "whose linspace() returns float64, as NumPy 1.x's value-based casting did for "
            "the release's 0-d float32 end points (else the beta grid is float32 and "
            "beta_batch[i] = max_hessnorm_beta raises TypeError); everything else is numpy's"
        )
    counter = {"calls": 0}
    jacobian_faster = beta_mod.jacobian_faster

    def counted_jacobian_faster(*args, **kwargs):
        counter["calls"] += 1
        return jacobian_faster(*args, **kwargs)

    beta_mod.jacobian_faster = counted_jacobian_faster
    patches.append(
        "jacobian_faster as called by estimate_beta_nonlinearity_hessorig is wrapped by a "
        "call counter (one Python increment per call, on the timed path) to count the "
        "examples the release's HNS searched"
    )
    release = types.SimpleNamespace(
        fgsm=fgsm_attack.fgsm,
        modified_fgsm=fgsm_attack.modified_fgsm,
        jacobian_io=methods._METHODS(None).jacobian_io,
        hns_jacobians=counter,
    )
    return release, patches


def release_provenance(root: Path) -> dict:
    """The release checkout's git commit (if ``root`` is the top of a git work tree) and
    the git blob id of each file imported from it (compare with ``git ls-tree HEAD``)."""
    import hashlib

    commit = None
    try:
        top = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--show-toplevel", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        if Path(top[0]).resolve() == root:
            commit = top[1]
    except (OSError, subprocess.CalledProcessError, IndexError):
        pass
    blobs = {}
    for rel in RELEASE_FILES:
        data = (root / rel).read_bytes()
        blobs[rel] = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    return {"path": str(root), "commit": commit, "file_blobs": blobs}


def main(argv: list[str] | None = None) -> dict:
    p = common.parser("authors_fgsm", __doc__, checkpoint=False)
    p.add_argument("--release", default=None, help="work tree of kartikgupta-at-anu/attack-bnn")
    p.add_argument("--n", type=int, default=10, help="examples attacked, one at a time")
    p.add_argument("--calib", type=int, default=101, help="NJS calibration images (release: 101)")
    p.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch.set_num_threads for the release (default: torch's own default)",
    )
    p.set_defaults(repeats=2)
    args = p.parse_args(argv)
    rec = common.Record("authors_fgsm", argv)
    torch, skipped = rec.import_peer("torch", MISSING, args.out)
    if skipped is not None:
        return skipped
    problem = release_problem(args.release)
    if problem is not None:
        print(problem)
        return rec.save({"skipped": problem}, args.out)
    if args.n < 1 or args.calib < 1:
        raise SystemExit("--n and --calib must be >= 1")
    root = Path(args.release).resolve()
    device = "cuda" if torch.cuda.is_available() else "cpu"  # what the release's fgsm picks
    release, patches = load_release(root, device)
    torch.manual_seed(0)
    if args.torch_threads is not None:
        torch.set_num_threads(args.torch_threads)

    bench = common.load_bench("resnet18", n=max(args.n, args.calib))
    f, eps = bench.logits_fn, bench.eps
    model = torch_pgd.torch_resnet18(f.args[0], classes=10).to(device)
    x_np, y_np = np.asarray(bench.x), np.asarray(bench.y)
    nchw = [
        torch.from_numpy(np.ascontiguousarray(x_np[i : i + 1].transpose(0, 3, 1, 2))).to(device)
        for i in range(len(x_np))
    ]
    targets = [
        torch.tensor([int(y_np[i])], dtype=torch.int64, device=device) for i in range(len(y_np))
    ]
    diff = torch_pgd.logit_difference(model, f, jnp.asarray(x_np[: min(8, args.n)]), device)

    # NJS's scalar, once, outside the timed region: the release's jacobian_io (batch 1,
    # its loop stops after 101 images) and qadv's attacks.njs on the same images.
    common.log(f"NJS calibration on {args.calib} images (release jacobian_io, qadv njs) ...")
    loader = [(nchw[i], targets[i]) for i in range(args.calib)]
    t0 = time.perf_counter()
    sp_scalar = float(release.jacobian_io(loader, device, model))
    release_calib_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    njs_t = jax.block_until_ready(attacks.njs(f, jnp.asarray(x_np[: args.calib])))
    qadv_calib_s = time.perf_counter() - t0  # includes compiling the Jacobian
    hns_t = attacks.hns()

    x_j = [jnp.asarray(x_np[i : i + 1]) for i in range(args.n)]
    y_j = [jnp.asarray(y_np[i : i + 1]) for i in range(args.n)]
    key = jax.random.key(0)
    keys = [jax.random.fold_in(key, i) for i in range(args.n)]
    qadv_temp = {"fgsm": None, "fgsm++njs": njs_t, "fgsm++hns": hns_t}
    rng_ranges = [[0.0, 1.0]] * 3
    per_channel = [eps] * 3

    def qadv_fn(name):
        t = qadv_temp[name]

        def call(i):
            adv = attacks.fgsm(f, x_j[i], y_j[i], eps=eps, key=keys[i], temperature=t)
            return np.asarray(jax.block_until_ready(adv))

        return call

    def release_fn(name):
        opts = dict(pytorch_range=rng_ranges, step_size=per_channel, epsil=per_channel)
        ns = types.SimpleNamespace(modified_attack_technique=TECHNIQUE.get(name))

        def call(i):
            if name == "fgsm":
                r = release.fgsm(nchw[i], model, targets=targets[i], **opts)
            else:
                r = release.modified_fgsm(nchw[i], model, ns, sp_scalar, targets=targets[i], **opts)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            return (nchw[i] + r.detach()).cpu().numpy().transpose(0, 2, 3, 1)

        return call

    fns = {}
    for name in ATTACKS:
        fns[(name, "qadv")] = qadv_fn(name)
        fns[(name, "release")] = release_fn(name)
    before = release.hns_jacobians["calls"]
    timings = dict(
        zip(
            fns,
            common.time_calls(
                [lambda fn=fn: [fn(i) for i in range(args.n)] for fn in fns.values()],
                args.repeats,
                warmups=[lambda fn=fn: fn(0) for fn in fns.values()],
            ),
            strict=True,
        )
    )
    # warm-up: 1 example; each round: n examples
    hns_calls = release.hns_jacobians["calls"] - before
    rows: dict = {name: {} for name in ATTACKS}
    for (name, side), t in timings.items():
        adv = np.concatenate(t.result)  # the last round's examples
        fooled = float(np.mean(common.predictions(f, adv) != y_np[: args.n]))
        rows[name][side] = {
            **t.as_dict(),
            "per_example_s": t.median_s / args.n,
            "per_example_s_best": t.min_s / args.n,
            "fooled_fraction": fooled,
            "linf": float(np.abs(adv - x_np[: args.n]).max()),
        }
    ratios = {
        name: rows[name]["release"]["per_example_s"] / rows[name]["qadv"]["per_example_s"]
        for name in ATTACKS
    }
    common.print_table(
        ["attack", "qadv s/example", "release s/example", "release / qadv", "paper (2080) s"],
        [
            [
                name,
                common.fmt(rows[name]["qadv"]["per_example_s"]),
                common.fmt(rows[name]["release"]["per_example_s"]),
                f"{ratios[name]:.2f}",
                PAPER_TABLE7_S[name],
            ]
            for name in ATTACKS
        ],
    )
    return rec.save(
        {
            "description": "seconds per example at batch 1 of FGSM, FGSM++ NJS and FGSM++ HNS: "
            "qadv.attacks.fgsm against the authors' release (kartikgupta-at-anu/attack-bnn) "
            "on the same ResNet-18 weights and images",
            "torch_version": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "torch_threads_set": args.torch_threads is not None,
            "torch_device": device,
            "release": release_provenance(root),
            "patches": patches,
            "model": bench.info,
            "max_logit_difference": diff,
            "n": args.n,
            "repeats": args.repeats,
            "eps": eps,
            "njs": {
                "calib_images": args.calib,
                "release_sp_scalar": sp_scalar,
                "qadv_mean_singular_value": float(1.0 / njs_t.beta1),
                "release_calibration_s": release_calib_s,
                "qadv_calibration_s_with_compile": qadv_calib_s,
                "note": "computed once before timing, on both sides, as the release does "
                "(METHODS.evaluate_adv calls jacobian_io before its attack loop)",
            },
            "release_hns_searched": {
                "examples": args.n * args.repeats + 1,
                "jacobians": hns_calls,
                "note": "examples whose random start was classified correctly get the "
                "Jacobian and the 100-point grid; the others get beta = 1 at no cost",
            },
            "attacks": rows,
            "release_over_qadv": ratios,
            "paper_table7_s": PAPER_TABLE7_S,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
