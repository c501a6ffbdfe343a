"""Gupta & Ajanthan, Table 7: cost of FGSM and FGSM++ (NJS, HNS) per adversarial example.

    qadv study --config experiments/gupta2021/table7.py --size cpu --out results/repro/gupta2021_table7_cpu

Paper setting: BNN-WQ ResNet-18 on CIFAR-10, batch size 1, one RTX 2080 GPU.
Targets: FGSM 0.01492 s, FGSM++ (NJS) 0.01604 s, FGSM++ (HNS) 0.0932 s per example.
Here: the same attacks at batch size 1 on the first 100 test images (20 on cpu); the
seconds per example are ``wall_time_s / n`` of each attack's record in
``cost/cells/*.json`` (compile time is recorded apart in each attack file).
The network is Table 2's (one store entry).
"""

from qadv.apps import paper_models as pm
from qadv.apps.repro import Experiment, Part, finish
from qadv.apps.study import StudyConfig


def config(size: str = "cpu", tiny: bool = False) -> Experiment:
    cells = pm.models([("bnn_wq_resnet18", "bnn_wq", "resnet18", {})], size)
    spec = pm.attack_spec(size, ("fgsm", "fgsm++njs", "fgsm++hns"), batch_size=1)
    spec = spec.__class__(**{**spec.to_dict(), "n": 20 if size == "cpu" else 100, "clean_n": 100})
    parts = (Part("cost", StudyConfig(cells, spec)),)
    return finish(
        Experiment("Gupta & Ajanthan Table 7", parts, size, __doc__.split("\n\n")[2]), tiny
    )
