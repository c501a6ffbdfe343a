"""Frickenstein et al., Figure 4: PGD accuracy against iterations for multi-bit (MBN1×3, MBN3×1, MBN3×3)
ResNet-20 and ResNet-56, ε = 2/255, step α ∈ {0.1, 0.5, 1}/255.

    qadv study --config experiments/frickenstein2020/figure4.py --size cpu --out results/repro/frickenstein2020_figure4_cpu

Paper setting: naturally trained networks on CIFAR-10, PGD up to 100 iterations (curves
averaged over five random starts). The claim: α = 0.5/255 is the worst case for every
representation and PGD converges within 20-50 steps. Plot:
``iterations/accuracy_vs_steps.png`` (one curve per network and α). Networks shared with
Table 2 (one store entry each); ``cpu`` uses CifarResNet-8 and up to 50 steps.
"""

from qadv.apps import paper_models as pm
from qadv.apps.repro import Experiment, Part, finish
from qadv.apps.study import StudyConfig

POLICIES = ("mbn1x3", "mbn3x1", "mbn3x3")
ALPHAS = (0.1, 0.5, 1.0)


def config(size: str = "cpu", tiny: bool = False) -> Experiment:
    archs = ("resnet20",) if size == "cpu" else ("resnet20", "resnet56")
    cells = pm.models([(f"{p}_{a}", p, a, {}) for a in archs for p in POLICIES], size)
    steps = (1, 5, 10, 20, 50) if size == "cpu" else (1, 5, 10, 20, 50, 100)
    extra = {f"pgd#a{a:g}_i{t}": {"steps": t, "step_size": a / 255} for a in ALPHAS for t in steps}
    spec = pm.attack_spec(size, tuple(extra), eps=(2 / 255,), extra_opts=extra)
    parts = (Part("iterations", StudyConfig(cells, spec), sweep="steps"),)
    return finish(
        Experiment("Frickenstein et al. Figure 4", parts, size, __doc__.split("\n\n")[2]), tiny
    )
