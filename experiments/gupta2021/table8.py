"""Gupta & Ajanthan, Table 8: APGD-DLR and Square against PGD++ on VGG-16.

    qadv study --config experiments/gupta2021/table8.py --size cpu --out results/repro/gupta2021_table8_cpu

Paper setting: ref, BNN-WQ, BNN-WAQ VGG-16 on CIFAR-10 at ε = 8/255 (Table 6).
Targets: APGD-DLR / Square / PGD++ NJS / HNS: ref 0.79 / 2.25 / 0.00 / 0.00; BNN-WQ
8.23 / 1.98 / 0.00 / 0.00; BNN-WAQ 0.38 / 16.67 / 0.01 / 0.02. The phenomenon: PGD++
reaches ≈ 0 where APGD-DLR and Square do not. Networks shared with Tables 1-3.
"""

from qadv.apps import paper_models as pm
from qadv.apps.repro import Experiment, Part, finish
from qadv.apps.study import StudyConfig


def config(size: str = "cpu", tiny: bool = False) -> Experiment:
    nets = [(f"{p}_vgg16", p, "vgg16", {}) for p in ("ref", "bnn_wq", "bnn_waq")]
    extra = {"square": {"queries": 1000 if size == "cpu" else 5000}}
    spec = pm.attack_spec(size, ("apgd-dlr", "square", "pgd++njs", "pgd++hns"), extra_opts=extra)
    parts = (Part("vgg16", StudyConfig(pm.models(nets, size), spec)),)
    return finish(
        Experiment("Gupta & Ajanthan Table 8", parts, size, __doc__.split("\n\n")[2]), tiny
    )
