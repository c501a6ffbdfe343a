"""BNN-WQ CNN on Fashion-MNIST trained with MD-tanh-S (mirror descent, tanh mirror map):
β annealed per step from 1 to 1000 over the first 75 % of the steps, the last 25 % on
hard signs (straight-through), then
BatchNorm statistics re-estimated on the hard-binarised network. Same data, epochs and
optimizer as fmnist_cnn_bnn_wq_bc.py.

    qadv train --config experiments/configs/fmnist_cnn_bnn_wq_md.py --out runs/md_vs_bc/md
"""

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "bc", Path(__file__).with_name("fmnist_cnn_bnn_wq_bc.py")
)
_bc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_bc)


def get_config():
    config = _bc.get_config()
    config["quant"] = {
        "policy": "bnn_wq",
        "wq_method": "md_tanh_s",
        "anneal_start": 1.0,
        "anneal_end": 1000.0,
        "hard_fraction": 0.25,
        "recalibrate_bn": True,
    }
    return config
