"""Frickenstein et al., Table 3: FastAT-trained MBN, PACT, XNOR and float ResNet-56.

    qadv study --config experiments/frickenstein2020/table3.py --size cpu --out results/repro/frickenstein2020_table3_cpu

Paper setting: ResNet-56 on CIFAR-10 (and CIFAR-100), FastAT at ε = 8/255, PGD-20 with
ε = 8/255, α = 2/255. Targets (CIFAR-10; Top-1 / PGD-20): float 84.03 / 38.45, PACT-4
85.56 / 40.48, PACT-2 81.80 / 45.98, XNOR 75.64 / 44.15, MBN3×1 77.01 / 51.98, MBN3×3
81.65 / 52.02, MBN5×5 82.01 / 50.71. The phenomenon: AT MBNs beat float and PACT by
6-14 points under PGD-20. Radius 8/255 at every size; ``cpu`` uses CifarResNet-14.
"""

from qadv.apps import paper_models as pm
from qadv.apps.repro import Experiment, Part, finish
from qadv.apps.study import StudyConfig

POLICIES = ("ref", "pact4", "pact2", "xnor", "mbn3x1", "mbn1x3", "mbn5x1", "mbn1x5", "mbn3x3",
            "mbn5x5")  # fmt: skip
CPU_POLICIES = ("ref", "pact2", "xnor", "mbn3x1", "mbn3x3")
EPS, ALPHA = 8 / 255, 2 / 255


def config(size: str = "cpu", tiny: bool = False) -> Experiment:
    pols = CPU_POLICIES if size == "cpu" else POLICIES
    nets = [
        (f"{p}_resnet56_fastat", p, "resnet56", {"adv": "fastat", "adv_eps": EPS}) for p in pols
    ]
    extra = {"pgd": {"steps": 20, "step_size": ALPHA}}
    spec = pm.attack_spec(size, ("pgd",), eps=(EPS,), extra_opts=extra)
    parts = (Part("fastat", StudyConfig(pm.models(nets, size), spec)),)
    return finish(
        Experiment("Frickenstein et al. Table 3", parts, size, __doc__.split("\n\n")[2]), tiny
    )
