"""qadv: honest robustness evaluation of quantized neural networks in JAX.

Importing qadv installs its float32 precision policy for JAX's matrix products and
convolutions (:mod:`qadv.precision`): on GPUs and TPUs, whose default is lower, numbers
and verdicts then match a CPU's. ``QADV_PRECISION=tensorfloat32`` (or ``bfloat16``)
chooses a faster one.
"""

from qadv import precision as _precision

__version__ = "0.1.0"

_precision.apply_default()
