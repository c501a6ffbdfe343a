"""Gupta & Ajanthan, Figure 2: flip rate of PGD++ (NJS) against IPROP on a BNN-WAQ MLP,
with the exact MILP answer as ground truth.

    qadv study --config experiments/gupta2021/figure2.py --size cpu --out results/repro/gupta2021_figure2_cpu

Paper setting: BNN-WAQ MLP with 5 hidden layers of 100 units on MNIST (95 % clean), L∞
radii in [0, 1]. The claim: PGD++ flips more predictions than IPROP at every radius.
Here ``qadv verify`` per network (``verify/<cell>/``): MILP, IPROP, PGD and PGD++. The
MILP grows quickly with depth: ``cpu`` uses 2×100 on Fashion-MNIST (as
``experiments/fig2_iprop.py``), ``gpu`` the paper's 5×100 on Fashion-MNIST, ``paper``
5×100 on MNIST (tfds).
"""

from qadv.apps import paper_models as pm
from qadv.apps.repro import Experiment, Part, finish
from qadv.apps.study import Cell, StudyConfig
from qadv.training import TrainConfig


def config(size: str = "cpu", tiny: bool = False) -> Experiment:
    pm.check_size(size)
    widths = (100, 100) if size == "cpu" else (100,) * 5
    train = TrainConfig(
        dataset="mnist" if size == "paper" else "fashion_mnist",
        arch="mlp",
        arch_opts={"widths": widths},
        policy="bnn_waq",
        epochs=10,
        optimizer="adam",
        lr=1e-3,
    )
    cells = (Cell("bnn_waq_mlp", train, group="bnn_waq"),)
    spec = pm.attack_spec(size, ("pgd",), eps=(0.01, 0.02, 0.05, 0.1))
    # IPROP costs 15-22 s per example and radius on the 2-core CPU: 20 images at four
    # radii keep the cpu size near its 30-minute budget
    opts = {"n": 20 if size == "cpu" else 200, "time_limit": 10.0}
    parts = (Part("verify", StudyConfig(cells, spec), kind="verify", options=opts),)
    return finish(
        Experiment("Gupta & Ajanthan Figure 2", parts, size, __doc__.split("\n\n")[2]), tiny
    )
