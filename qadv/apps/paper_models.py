"""The seed papers' settings at three sizes: datasets, architectures, recipes, threats.

Every experiment config under ``experiments/<paper>/`` builds its networks and attacks
from here, so a network shared by several tables has one training config (one hash in
the checkpoint store, trained once) and every table uses the same attack parameters.

Sizes (:data:`SIZES`), the same experiment at each:

* ``paper``: the paper's dataset (CIFAR-10/100 through tfds), architecture and schedule
  (100 epochs of Adam, as ``experiments/cifar10_table2.py``), every test image; run it
  on an accelerator host (the attacks shard the batch over the local devices).
* ``gpu``: Fashion-MNIST zero-padded to 32×32 (``fashion_mnist32``) with the paper's
  architectures and a schedule long enough for BNNs to become confident (20 epochs on
  the full training set), 1,000 test images; sized for one H200 in under 8 minutes
  per config (an estimate: not measured, no accelerator was available).
* ``cpu``: Fashion-MNIST (28×28) with smaller networks in place of the paper's (a
  3×1024 MLP for ResNet-18, the small CNN for VGG-16, CifarResNet-8/14 for
  ResNet-20/56; the other architectures have no ``cpu`` row), 500 test images;
  each config under 30 minutes on 2 CPU cores.

Threats: ``paper`` uses Table 6 of Gupta & Ajanthan (ε and η in pixels of 255). On
Fashion-MNIST the L∞ radius is 0.1 (about 25.5/255), the usual Fashion-MNIST budget:
at 8/255 PGD leaves a float network robust, so nothing can be said about masking
(``results/demo``). Every ε and η of Table 6 is scaled by the same factor, so η/ε and
the number of steps stay as in the paper.

Example:
    >>> model("bnn_wq", "resnet18", "cpu").model.arch
    'mlp'
    >>> threat("cpu")["pgd"]
    {'eps': 0.1, 'step_size': 0.025, 'steps': 20}
    >>> model("ref", "resnet50", "cpu") is None
    True
    >>> check_size("tpu")
    Traceback (most recent call last):
    ...
    ValueError: unknown size 'tpu'; choose one of: paper, gpu, cpu
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from qadv.apps.study import Cell, EvalSpec
from qadv.attacks.norms import NORMS, get_norm
from qadv.training import TrainConfig

__all__ = [
    "FMNIST_LINF",
    "SIZES",
    "TABLE6",
    "attack_spec",
    "check_size",
    "dataset",
    "eval_size",
    "model",
    "models",
    "threat",
]

SIZES: tuple[str, ...] = ("paper", "gpu", "cpu")

#: Table 6 of Gupta & Ajanthan: (ε, η, T) with ε and η in pixels of 255.
TABLE6: dict[str, dict[str, tuple[float, float, int]]] = {
    "cifar10": {"fgsm": (8, 8, 1), "pgd": (8, 2, 20), "pgd_l2": (120, 15, 20)},
    "cifar100": {"fgsm": (4, 4, 1), "pgd": (4, 1, 10), "pgd_l2": (60, 15, 10)},
}

#: L∞ radius on Fashion-MNIST (``gpu`` and ``cpu`` sizes).
FMNIST_LINF = 0.1

#: Smaller stand-ins at ``cpu`` size: (arch, arch_opts, train_examples, epochs).
_CPU_ARCH: dict[str, tuple[str, dict, int | None, int]] = {
    "resnet18": ("mlp", {"widths": (1024, 1024, 1024)}, None, 15),
    "vgg16": ("cnn", {}, 10_000, 4),
    "resnet20": ("resnet20", {"depth": 8}, 6_000, 2),
    "resnet56": ("resnet20", {"depth": 14}, 6_000, 2),
}

#: Epochs of PGD adversarial training at ``cpu`` size (as ``experiments/robust_training.py``),
#: so that a config with four adversarially trained MLPs fits in 30 minutes on 2 cores.
CPU_PGD_AT_EPOCHS = 4

#: Test images attacked (clean accuracy uses all of them) at each size.
_N = {"paper": 10_000, "gpu": 1_000, "cpu": 500}
_EPOCHS = {"paper": 100, "gpu": 20}


def check_size(size: str) -> str:
    """``size`` if it is one of :data:`SIZES`, else a one-line ``ValueError``."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of: {', '.join(SIZES)}")
    return size


def dataset(size: str, paper_dataset: str = "cifar10") -> str:
    """The dataset of ``size``: the paper's, or Fashion-MNIST (padded to 32×32 on GPU)."""
    check_size(size)
    if paper_dataset not in TABLE6:
        raise ValueError(f"unknown paper dataset {paper_dataset!r}; choose cifar10 or cifar100")
    return {"paper": paper_dataset, "gpu": "fashion_mnist32", "cpu": "fashion_mnist"}[size]


def threat(size: str, paper_dataset: str = "cifar10") -> dict[str, dict[str, Any]]:
    """Table 6's FGSM, PGD-L∞ and PGD-L2 parameters at ``size`` (ε, η in [0, 1] units)."""
    dataset(size, paper_dataset)
    table = TABLE6[paper_dataset]
    scale = 1 / 255 if size == "paper" else FMNIST_LINF / table["pgd"][0]
    return {
        k: {"eps": e * scale, "step_size": s * scale, "steps": t} for k, (e, s, t) in table.items()
    }


#: Table 6's PGD row of each threat model.
_PGD_ROW = {NORMS["linf"]: "pgd", NORMS["l2"]: "pgd_l2"}


def eval_size(size: str) -> int:
    """Test images attacked at ``size``."""
    return _N[check_size(size)]


def model(
    policy: str,
    arch: str,
    size: str,
    *,
    paper_dataset: str = "cifar10",
    wq_method: str | None = None,
    adv: str | None = None,
    igr_lambda: float | None = None,
    adv_eps: float | None = None,
    seed: int = 0,
) -> TrainConfig | None:
    """The training config of one paper network at ``size`` (``None``: no ``cpu`` row).

    Args:
        policy: ``ref``, ``bnn_wq``, ``bnn_waq``, ``pact4``, ``mbn3x1``, ...
        arch: the paper's architecture (``resnet18``, ``vgg16``, ``resnet20``, ...).
        size: one of :data:`SIZES`.
        paper_dataset: ``cifar10`` or ``cifar100`` (the ``paper`` size's dataset).
        wq_method: BNN-WQ weight method; ``None``: MD-tanh-S at ``paper``/``gpu`` size
            (the paper's), BinaryConnect at ``cpu`` size (the demo's recipe, which
            becomes confident within its 15 epochs).
        adv: adversarial training: ``pgd`` (Madry: 7 steps, η = ε/4 at the size's L∞
            radius; :data:`CPU_PGD_AT_EPOCHS` epochs at ``cpu`` size) or ``fastat`` (one
            FGSM step, cyclic learning rate).
        igr_lambda: input-gradient regularisation by finite differences (Finlay & Oberman).
        adv_eps: radius of adversarial training and IGR (default: the size's L∞ radius).
        seed: training seed.
    """
    ds = dataset(size, paper_dataset)
    opts: dict[str, Any] = {}
    train_examples = None
    if size == "cpu":
        if arch not in _CPU_ARCH:
            return None
        arch, opts, train_examples, epochs = _CPU_ARCH[arch]
    else:
        epochs = _EPOCHS[size]
        if arch in ("resnet56",):
            arch, opts = "resnet20", {"depth": 56}
    kw: dict[str, Any] = {}
    if policy == "bnn_wq":
        kw["wq_method"] = wq_method or ("bc" if size == "cpu" else "md_tanh_s")
        if kw["wq_method"] != "bc":
            kw.update(anneal_start=1.0, anneal_end=100.0, hard_fraction=0.1)
    eps = threat(size, paper_dataset)["pgd"]["eps"] if adv_eps is None else adv_eps
    if adv is not None:
        kw.update(adv=adv, adv_eps=eps, robust_eps=eps, robust_examples=200)
        if adv == "pgd":
            kw.update(adv_steps=7, adv_step_size=eps / 4)
            if size == "cpu":
                # 8 passes per step: 15 epochs would take about 25 min per MLP on 2 cores
                epochs = min(epochs, CPU_PGD_AT_EPOCHS)
        if adv == "fastat":
            kw["schedule"] = "cyclic"
    if igr_lambda is not None:
        kw.update(igr="fd", igr_lambda=igr_lambda, robust_eps=eps, robust_examples=200)
    return TrainConfig(
        seed=seed,
        dataset=ds,
        arch=arch,
        arch_opts=opts,
        policy=policy,
        epochs=epochs,
        optimizer="adam",
        lr=1e-3,
        batch_size=128,
        train_examples=train_examples,
        **kw,
    )


def models(
    specs: Sequence[tuple[str, str, str, Mapping[str, Any]]], size: str, **common: Any
) -> tuple[Cell, ...]:
    """Cells from ``(name, policy, arch, options)`` rows, skipping those without a
    network at ``size``; ``options`` go to :func:`model`."""
    cells = []
    for name, policy, arch, opts in specs:
        config = model(policy, arch, size, **{**common, **dict(opts)})
        if config is not None:
            cells.append(Cell(name, config, group=policy))
    return tuple(cells)


def attack_spec(
    size: str,
    attacks: Sequence[str],
    *,
    norm: str = "linf",
    paper_dataset: str = "cifar10",
    extra_opts: Mapping[str, Mapping[str, Any]] | None = None,
    eps: Sequence[float] | None = None,
    ensemble: str | None = None,
    batch_size: int | None = None,
) -> EvalSpec:
    """An :class:`EvalSpec` with Table 6's parameters for every FGSM/PGD-family attack.

    ``attacks`` are study names (``fgsm``, ``fgsm++njs``, ``pgd#r20``, ``apgd-dlr``, ...);
    ``fgsm*`` get Table 6's FGSM η, ``pgd*`` its PGD η and T (of ``norm``), the others
    their own defaults; ``extra_opts`` add or override per attack. The radius is the
    size's Table-6 ε of ``norm`` unless ``eps`` is given.
    """
    t = threat(size, paper_dataset)
    geometry = get_norm(norm)
    key = _PGD_ROW[geometry]
    radius = (t[key]["eps"],) if eps is None else tuple(eps)
    opts: dict[str, dict[str, Any]] = {}
    for name in attacks:
        base = name.partition("#")[0].partition("++")[0]
        if base == "fgsm":
            fgsm = geometry is NORMS["linf"]  # Table 6's FGSM row is L∞ only
            opts[name] = {"step_size": t["fgsm"]["step_size"]} if fgsm else {}
        elif base == "pgd":
            opts[name] = {"step_size": t[key]["step_size"], "steps": t[key]["steps"]}
        opts[name] = {**opts.get(name, {}), **dict((extra_opts or {}).get(name, {}))}
    n = eval_size(size)
    return EvalSpec(
        n=n,
        clean_n=None,
        eps=radius,
        norm=norm,
        attacks=tuple(attacks),
        attack_opts={k: v for k, v in opts.items() if v},
        ensemble=ensemble,
        ensemble_opts={"queries": 1000, "n_targets": 3} if ensemble and size == "cpu" else {},
        batch_size=batch_size or (250 if size == "cpu" else 500),
        jacobian_examples=100,
    )
