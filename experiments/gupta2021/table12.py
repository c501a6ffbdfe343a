"""Gupta & Ajanthan, Table 12: PGD++ (NJS) against ρ.

    qadv study --config experiments/gupta2021/table12.py --size cpu --out results/repro/gupta2021_table12_cpu

Paper setting: ref, BNN-WQ, BNN-WAQ ResNet-18 on CIFAR-10, PGD++ (NJS) with ρ from 1e-5 to
0.2 at Table 6's PGD-L∞. Targets: ref and BNN-WQ 0.00 at every ρ; BNN-WAQ 0.15, 0.08,
0.04, 0.03, 0.04, 0.02. The phenomenon: NJS is insensitive to ρ. Plot: robust accuracy
against ρ (``rho/accuracy_vs_rho.png``).
"""

from qadv.apps import paper_models as pm
from qadv.apps.repro import Experiment, Part, finish
from qadv.apps.study import StudyConfig

RHOS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 2e-1)


def config(size: str = "cpu", tiny: bool = False) -> Experiment:
    nets = [(f"{p}_resnet18", p, "resnet18", {}) for p in ("ref", "bnn_wq", "bnn_waq")]
    names = tuple(f"pgd++njs#rho{r:g}" for r in RHOS)
    spec = pm.attack_spec(
        size, names, extra_opts={n: {"rho": r} for n, r in zip(names, RHOS, strict=True)}
    )
    parts = (Part("rho", StudyConfig(pm.models(nets, size), spec), sweep="rho"),)
    return finish(
        Experiment("Gupta & Ajanthan Table 12", parts, size, __doc__.split("\n\n")[2]), tiny
    )
