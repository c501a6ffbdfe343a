"""Frickenstein et al., Table 2: BOPS, clean and PGD-20/50 accuracy of naturally trained
multi-bit (MBN M×N), fixed-point (PACT), binary (XNOR-Net) and float ResNets.

    qadv study --config experiments/frickenstein2020/table2.py --size cpu --out results/repro/frickenstein2020_table2_cpu

Paper setting: ResNet-20 and ResNet-56 on CIFAR-10 (ResNet-56 on CIFAR-100, ResNet-18 on
ImageNet: not here); PGD with ε = 2/255, α = 0.5/255, 20 and 50 steps (their worst-case
threat model), averaged over five runs. Targets (ResNet-20, CIFAR-10; Top-1 / PGD-20):
float 92.49 / 1.02, PACT-4 92.21 / 1.49, PACT-2 89.63 / 3.94, XNOR 83.98 / 9.93, MBN1×1
84.44 / 11.10, MBN3×1 87.19 / 14.28, MBN1×3 87.54 / 9.09. The phenomenon (MBN robustness
ordering): M×1 MBNs > 1×N MBNs > PACT > float under PGD. The radius stays 2/255 at every
size (as ``experiments/mbn_design_space.py``); ``cpu`` uses CifarResNet-8/14 on 6,000
images for 2 epochs. BOPS: ``qadv info --arch resnet20 --quant POLICY``.
"""

from qadv.apps import paper_models as pm
from qadv.apps.repro import Experiment, Part, finish
from qadv.apps.study import StudyConfig

POLICIES = ("ref", "pact4", "pact2", "xnor", "mbn1x1", "mbn3x1", "mbn1x3", "mbn5x1", "mbn1x5",
            "mbn7x1", "mbn1x7", "mbn3x3", "mbn5x5")  # fmt: skip
CPU_POLICIES = ("ref", "pact4", "pact2", "xnor", "mbn1x1", "mbn3x1", "mbn1x3")
EPS, ALPHA = 2 / 255, 0.5 / 255


def config(size: str = "cpu", tiny: bool = False) -> Experiment:
    pols = CPU_POLICIES if size == "cpu" else POLICIES
    archs = ("resnet20",) if size == "cpu" else ("resnet20", "resnet56")
    cells = pm.models([(f"{p}_{a}", p, a, {}) for a in archs for p in pols], size)
    names = ("pgd#20", "pgd#50")
    extra = {n: {"steps": int(n[4:]), "step_size": ALPHA} for n in names}
    spec = pm.attack_spec(size, names, eps=(EPS,), extra_opts=extra)
    parts = (Part("natural", StudyConfig(cells, spec)),)
    return finish(
        Experiment("Frickenstein et al. Table 2", parts, size, __doc__.split("\n\n")[2]), tiny
    )
