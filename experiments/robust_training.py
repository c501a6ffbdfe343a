"""Attacking robustly trained networks (the core paper's Table 4 pattern, and seed 002's
gradient-regularised models beside PGD-AT), on real Fashion-MNIST.

Launch (every step resumes after a kill; rerun the same command)::

    qadv study --config experiments/robust_training.py --out results/robust_training

Every cell is the 3×1024 MLP of ``qadv demo`` (where a naturally trained BNN-WQ masks
its gradients and looks 22.6 % robust to PGD at ε = 0.1, and the ensemble finds 0 %),
trained at the Fashion-MNIST budget ε = 0.1 (L∞):

- ``ref_pgdat``, ``bnn_wq_bc_pgdat``, ``bnn_wq_md_pgdat``: PGD-7 adversarial training
  (Madry; step ε/4 = 0.025, random start) of the float network and of BNN-WQ trained
  with BinaryConnect and with MD-tanh-S (β annealed per step to 100, the last 10 % of
  the steps with hard signs, then BatchNorm statistics re-estimated on the
  hard-binarised network);
- ``ref_fastat``, ``bnn_wq_bc_fastat``: FastAT (one FGSM step of 1.25 ε from a random
  start, cyclic learning rate);
- ``ref_igr``: input-gradient regularisation by finite differences (λ = 0.01 on the
  squared ℓ1 norm, the dual of L∞; h = 0.01), no adversarial examples.

Each cell is attacked on the first 500 test images at ε = 0.1 with PGD-20, PGD with a
fixed β = 0.1, PGD++ (NJS), PGD++ (HNS), APGD-DLR and AutoAttack's ``standard`` ensemble
(3 target classes, a 1,000-query Square, as in the masking study on CPU). Schedules are
short (4 epochs of Adam, cosine; cyclic for FastAT) to fit 2 CPU cores; see the results
README for the wall times.
"""

from __future__ import annotations

from qadv.apps.study import Cell, EvalSpec, StudyConfig
from qadv.training import TrainConfig

EPS = 0.1
EPOCHS = 4


def _cell(name: str, group: str, policy: str = "ref", **kw) -> Cell:
    base = dict(
        dataset="fashion_mnist",
        arch="mlp",
        arch_opts={"widths": (1024, 1024, 1024)},
        policy=policy,
        epochs=EPOCHS,
        optimizer="adam",
        lr=1e-3,
        adv_eps=EPS,
        robust_eps=EPS,
        robust_examples=500,
    )
    return Cell(name, TrainConfig(**{**base, **kw}), group=group, axes={"depth": 4, "width": 1024})


# as run (results/robust_training): annealed to 100, the last 10 % on hard signs
MD = {"wq_method": "md_tanh_s", "anneal_start": 1.0, "anneal_end": 100.0, "hard_fraction": 0.1}


def config() -> StudyConfig:
    cells = (
        _cell("ref_pgdat", "PGD-AT", adv="pgd"),
        _cell("bnn_wq_bc_pgdat", "PGD-AT", "bnn_wq", adv="pgd"),
        _cell("bnn_wq_md_pgdat", "PGD-AT", "bnn_wq", adv="pgd", **MD),
        _cell("ref_fastat", "FastAT", adv="fastat", schedule="cyclic"),
        _cell("bnn_wq_bc_fastat", "FastAT", "bnn_wq", adv="fastat", schedule="cyclic"),
        _cell("ref_igr", "IGR (finite differences)", igr="fd", igr_lambda=0.01),
    )
    spec = EvalSpec(
        n=500,
        eps=(EPS,),
        attacks=("pgd", "pgd++fixed", "pgd++njs", "pgd++hns", "apgd-dlr"),
        attack_opts={"pgd++fixed": {"beta": 0.1}},
        ensemble="standard",
        ensemble_opts={"queries": 1000, "n_targets": 3},
    )
    return StudyConfig(
        cells=cells,
        eval=spec,
        name="Robustly trained networks under PGD, PGD++ and the ensemble",
        description=(
            "Float and BNN-WQ 3×1024 MLPs on Fashion-MNIST, trained with PGD-7 AT, FastAT "
            "or input-gradient regularisation at ε = 0.1, attacked with PGD, fixed-β PGD, "
            "PGD++ (NJS, HNS), APGD-DLR and the ensemble."
        ),
    )
