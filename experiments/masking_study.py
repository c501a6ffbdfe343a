"""Where do binarised networks mask gradients? A grid over depth, width, binarisation,
training length and weight method, on real Fashion-MNIST (DESIGN §2).

Launch (every step resumes after a kill; rerun the same command)::

    qadv study --config experiments/masking_study.py --out results/masking_study
    qadv study --config experiments/masking_study.py --set size=gpu --out results/masking_study_gpu

``--only CELL,CELL`` runs a subset now (the table lists every finished cell).

The starting point: a 3×1024 BNN-WQ MLP (BinaryConnect, every layer ±1, BatchNorm
without affine, Adam, 15 epochs) leaves 13.5% of the test images with an exactly-zero
input gradient (top-1 lead over 88 logits) and looks robust under PGD, while the small
CNNs never saturate. Every cell is BNN-WQ (``bnn_wq``); the grid varies

- depth and width: MLPs with 1 or 3 hidden layers of 256 or 1024 units, the small CNN,
  CifarResNets (8 and 14 layers on CPU; 8/14/20 and a ResNet-18 of width 16 on GPU);
- how much is binarised: every layer ±1 (the ``bnn_wq`` default) against the first and
  last layers kept in float;
- training length: 5, 15 and 30 epochs (60 on GPU) of the 3×1024 MLP;
- the weight method: BinaryConnect against MD-tanh-S annealed to β = 100 per step
  (``anneal_end``), evaluated with hard signs as trained and after re-estimating its
  BatchNorm statistics on the hard-binarised network.

CPU size (``size=cpu``, the default): 12 cells, one to one and a half hours on 2 CPU
cores (the ``mlp1x256`` cell alone took 3.8 min: 51 s of training, 2.8 min of
evaluation, mostly compilation; cells of one architecture share compiled attacks).
Measured per epoch on 2 shared cores: 3×1024 MLP 8–15 s, CNN 1–3.5 min, CifarResNet-8 about
3.5 ms and CifarResNet-14 about 8 ms per training image. To fit, the ResNets train on
the first 10,000 training images for 4 epochs (so their clean accuracy and confidence
are lower than a full schedule would give), and the evaluation uses the first 200 test
images, Square with 1,000 queries and AutoAttack's ``standard`` ensemble with 3 target
classes (APGD-T, FAB-T) and a 1,000-query Square. APGD-CE is the ensemble's first
member (its accuracy alone is in each cell record); APGD-DLR runs on its own.

GPU size (``size=gpu``): full training sets, longer schedules, CifarResNet-20 and a
ResNet-18 of width 16, the first 1,000 test images and the unmodified ``standard``
ensemble.
"""

from __future__ import annotations

from qadv.apps.study import Cell, EvalSpec, StudyConfig
from qadv.training import TrainConfig

SIZES = ("cpu", "gpu")


def _bnn(arch: str, *, epochs: int, **kw) -> TrainConfig:
    return TrainConfig(
        dataset="fashion_mnist",
        arch=arch,
        policy="bnn_wq",
        wq_method=kw.pop("wq_method", "bc"),
        epochs=epochs,
        optimizer="adam",
        lr=1e-3,
        **kw,
    )


def _mlp(widths: tuple[int, ...], *, epochs: int, **kw) -> TrainConfig:
    return _bnn("mlp", epochs=epochs, arch_opts={"widths": widths}, **kw)


def config(size: str = "cpu") -> StudyConfig:
    """The masking study at ``size`` ``cpu`` (about an hour on 2 cores) or ``gpu``."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of: {', '.join(SIZES)}")
    gpu = size == "gpu"
    e_mlp = 30 if gpu else 15
    cells = []
    for depth in (1, 3):
        for width in (256, 1024):
            cells.append(
                Cell(
                    f"mlp{depth}x{width}",
                    _mlp((width,) * depth, epochs=e_mlp),
                    group="MLP BC",
                    axes={"depth": depth + 1, "width": width},
                )
            )
    ref = (1024,) * 3
    for epochs in (5, 60) if gpu else (5, 30):
        cells.append(
            Cell(
                f"mlp3x1024_e{epochs}",
                _mlp(ref, epochs=epochs),
                group="MLP BC",
                axes={"depth": 4, "width": 1024},
            )
        )
    cells.append(
        Cell(
            "mlp3x1024_float_ends",
            _mlp(ref, epochs=e_mlp, policy_opts={"float_first": True, "float_last": True}),
            group="MLP BC, float first/last",
            axes={"depth": 4, "width": 1024},
        )
    )
    md = _mlp(
        ref,
        epochs=e_mlp,
        wq_method="md_tanh_s",
        anneal_start=1.0,
        anneal_end=100.0,
        hard_fraction=0.0,  # as first run: annealed to beta = 100, no hard-sign phase,
        recalibrate_bn=False,  # and BatchNorm re-estimated by the study cell instead
    )
    cells.append(Cell("mlp3x1024_md", md, group="MLP MD-tanh-S", axes={"depth": 4, "width": 1024}))
    cells.append(
        Cell(
            "mlp3x1024_md_recal",
            md,
            group="MLP MD-tanh-S, BN recalibrated",
            axes={"depth": 4, "width": 1024},
            recalibrate=True,
        )
    )
    cells.append(Cell("cnn", _bnn("cnn", epochs=12 if gpu else 3), group="CNN", axes={"depth": 4}))
    subset = None if gpu else 10_000
    for depth in (8, 14, 20) if gpu else (8, 14):
        cells.append(
            Cell(
                f"resnet{depth}",
                _bnn(
                    "resnet20",
                    epochs=40 if gpu else 4,
                    arch_opts={"depth": depth},
                    train_examples=subset,
                ),
                group="CifarResNet",
                axes={"depth": depth, "width": 16},
            )
        )
    if gpu:
        cells.append(
            Cell(
                "resnet18_w16",
                _bnn("resnet18", epochs=40, arch_opts={"width": 16}),
                group="ResNet-18",
                axes={"depth": 18, "width": 16},
            )
        )
    if gpu:
        spec = EvalSpec(
            n=1000,
            eps=(0.1, 8 / 255),
            attacks=("pgd", "pgd++njs", "pgd++hns", "apgd-ce", "apgd-dlr", "square"),
        )
    else:
        spec = EvalSpec(
            n=200,
            eps=(0.1, 8 / 255),
            attacks=("pgd", "pgd++njs", "pgd++hns", "apgd-dlr", "square"),
            attack_opts={"square": {"queries": 1000}},
            ensemble_opts={"queries": 1000, "n_targets": 3},
        )
    return StudyConfig(
        cells=tuple(cells),
        eval=spec,
        name=f"Gradient masking in binarised networks ({size})",
        description=(
            "BNN-WQ networks on Fashion-MNIST, varying depth, width, how much is "
            "binarised, training length and the weight method. Does the share of "
            "images with an exactly-zero input gradient predict how far PGD "
            "overestimates robustness (PGD − ensemble)?"
        ),
    )
