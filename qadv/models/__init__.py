"""Flax Linen models under quantization policies.

Every model maps ``[0, 1]`` NHWC images to logits, normalises inside with ``mean``/``std``
and is called as ``model.apply(variables, x, train=False, anneal=1.0)`` (with
``mutable=["batch_stats"]`` when ``train=True``). Quantized layers sow their effective
inputs and weights in the ``"quantized"`` collection.
"""

from qadv.models.binarynet import BinaryNetResNet, BinaryNetVGG
from qadv.models.calibrate import batch_norm_paths, recalibrate_batch_stats
from qadv.models.densenet import DenseNet
from qadv.models.layers import QConv, QDense, quantize_bias, quantize_kernel
from qadv.models.mobilenet import MobileNetV2
from qadv.models.precision import COMPUTE_DTYPES, check_compute_dtype, with_compute_dtype
from qadv.models.registry import (
    MODEL_NAMES,
    check_images,
    get_model,
    init_variables,
    layer_costs,
    make_logits_fn,
)
from qadv.models.resnet import CifarResNet, ResNet
from qadv.models.small import CNN, MLP
from qadv.models.vgg import VGG

__all__ = [
    "CNN",
    "COMPUTE_DTYPES",
    "MLP",
    "MODEL_NAMES",
    "VGG",
    "BinaryNetResNet",
    "BinaryNetVGG",
    "CifarResNet",
    "DenseNet",
    "MobileNetV2",
    "QConv",
    "QDense",
    "ResNet",
    "batch_norm_paths",
    "check_compute_dtype",
    "check_images",
    "get_model",
    "init_variables",
    "layer_costs",
    "make_logits_fn",
    "quantize_bias",
    "quantize_kernel",
    "recalibrate_batch_stats",
    "with_compute_dtype",
]
