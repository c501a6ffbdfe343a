"""Robustness evaluation on the attack protocol.

- :func:`evaluate_attack`: one attack over a test set, verified (ε-ball and [0, 1]
  checked, model re-run), scored honestly (a misclassified clean image is never robust),
  per-example records, resumable;
- :func:`evaluate_ensemble`: AutoAttack's cascade, per-example worst case over attacks;
- :func:`robust_accuracy_at`: robust accuracy at any radius from minimum-norm results;
- :func:`diagnose`, :func:`accuracy_curve`: signal propagation and accuracy vs iterations;
- :func:`masking_report`: the gradient-masking checks with verdicts
  (:mod:`qadv.evaluate.masking`); :mod:`qadv.evaluate.signal_report` and
  :mod:`qadv.evaluate.bounds`: the paper's Tables 11-14, CLEVER and attack lower bounds.
"""

from qadv.evaluate.core import clean_predictions, evaluate_attack, predict
from qadv.evaluate.diagnostics import accuracy_curve, diagnose
from qadv.evaluate.ensemble import evaluate_ensemble, robust_accuracy_at
from qadv.evaluate.masking import MaskingConfig, masking_report

__all__ = [
    "MaskingConfig",
    "accuracy_curve",
    "clean_predictions",
    "diagnose",
    "evaluate_attack",
    "evaluate_ensemble",
    "masking_report",
    "predict",
    "robust_accuracy_at",
]
