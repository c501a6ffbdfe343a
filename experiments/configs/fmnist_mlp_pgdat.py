"""PGD-7 adversarial training (Madry) of the 3×1024 BNN-WQ MLP on Fashion-MNIST at ε = 0.1.

    qadv train --config experiments/configs/fmnist_mlp_pgdat.py --out runs/mlp_bnn_wq_pgdat
    qadv train --config experiments/configs/fmnist_mlp_pgdat.py --quant ref --out runs/mlp_ref_pgdat
    qadv train --config experiments/configs/fmnist_mlp_pgdat.py --adv fastat --schedule cyclic \
        --out runs/mlp_bnn_wq_fastat
"""


def get_config():
    return {
        "data": {"dataset": "fashion_mnist"},
        "model": {"arch": "mlp", "arch_opts": {"widths": [1024, 1024, 1024]}},
        "quant": {"policy": "bnn_wq", "wq_method": "bc"},
        "optim": {"epochs": 4, "optimizer": "adam", "lr": 1e-3},
        "adversary": {"name": "pgd", "eps": 0.1, "steps": 7},
        "eval": {"robust_examples": 500, "robust_eps": 0.1},
    }
