"""FastAT of a ResNet-20 MBN 3×1 on CIFAR-10 (004's setting; GPU, tfds download).

qadv train --config experiments/configs/cifar10_resnet20_mbn_fastat.py --out runs/c10_mbn3x1_fastat
qadv info --arch resnet20 --dataset cifar10 --quant mbn:3x1     # 1.49e8 BOPS
"""


def get_config():
    return {
        "data": {"dataset": "cifar10"},
        "model": {"arch": "resnet20"},
        "quant": {"policy": "mbn:3x1"},
        "optim": {
            "epochs": 30,
            "batch_size": 128,
            "optimizer": "sgd",
            "lr": 0.2,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "schedule": "cyclic",
        },
        "adversary": {"name": "fastat", "eps": 8 / 255},
        "eval": {"robust_examples": 1000},
    }
