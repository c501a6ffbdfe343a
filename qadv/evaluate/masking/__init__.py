"""Gradient-masking report: is a model's robustness real, or do its gradients hide it?

A model *masks* gradients when gradient attacks fail for reasons that have nothing to do
with robustness: a saturated softmax whose gradient is exactly zero (binarised networks,
DESIGN §2), a straight-through gradient that does not describe the function, randomness,
or a probability output. Athalye et al. (2018) and AutoAttack's ``checks.py`` list the
signs; :func:`masking_report` runs one check per sign and gives each a verdict with its
reason:

==================  =================================================================
check               masking suspected when
==================  =================================================================
zero-gradients      ≥ ``zero_gradient_threshold`` % of the correctly classified examples
                    have an exactly-zero input gradient (cross-entropy, β = 1)
softmax-output      the model's outputs are probabilities (non-negative, rows sum to 1)
randomness          two forward passes on the same images differ
gradient-fidelity   the input gradient disagrees with a finite difference of the loss
                    along a random direction, beyond the difference's rounding noise at
                    the model's precision, for many examples (shattered or
                    straight-through gradients)
temperature         PGD++ (one temperature on the logits) beats PGD by > ``tolerance``
iterations          a single step beats PGD, or PGD plateaus over 1..``max_steps``
                    iterations above what other attacks reach
epsilon             PGD's accuracy does not fall to 0 as ε grows while other curves do,
                    or stays above 0 at the largest meaningful ε (1 for L∞)
step-size           no step size brings PGD within ``tolerance`` of PGD++ (paper Fig. 3)
transfer            PGD on a surrogate model beats white-box PGD (needs ``surrogate``)
black-box           Square (gradient-free) beats white-box PGD
==================  =================================================================

"Beats" always means lower robust accuracy on the same examples by more than
``tolerance`` percentage points, and significantly so: a one-sided sign test on the
examples that only one of the two attacks breaks must give p < 0.01 (:func:`beats`).
Every attack is scored the qadv way (ball and [0, 1] verified, model re-run,
misclassified clean images never robust) and saved, so that a killed report resumes
attack by attack. The report also gives the per-example worst case over every attack it
ran at ε: an upper bound on the model's true robust accuracy. Every attack a check runs
goes through one door (:meth:`Probe.record`), which registers the per-example robust flags
of each attack at the report's ε (FGSM, the step-size sweep, PGD-``max_steps`` of the
iterations curve, the temperatures, Square, transfer, ...); the worst case is taken over
all of them, whichever checks ran.

Checks register themselves with :func:`check`; a new check is one function ``probe ->
CheckOutcome``. The package's modules: :mod:`~qadv.evaluate.masking.config` (what to
measure), :mod:`~qadv.evaluate.masking.outcome` (a check's outcome, the registry,
:func:`beats`), :mod:`~qadv.evaluate.masking.probe` (the cached attacks and measurements
the checks share), :mod:`~qadv.evaluate.masking.gradient_checks` and
:mod:`~qadv.evaluate.masking.attack_checks` (the checks), :mod:`~qadv.evaluate.masking.report`
(running them) and :mod:`~qadv.evaluate.masking.output` (JSON, markdown, plots).
"""

# importing a checks module registers its checks; the report runs them in that order
from qadv.evaluate.masking import gradient_checks as gradient_checks

# isort: split
from qadv.evaluate.masking import attack_checks as attack_checks

# isort: split
from qadv.evaluate.masking.config import MaskingConfig
from qadv.evaluate.masking.gradient_checks import (
    FD_LADDER,
    FD_NOISE_FACTOR,
    SATURATION_GAP,
    compute_epsilon,
)
from qadv.evaluate.masking.outcome import (
    CHECKS,
    PASS,
    SKIPPED,
    SUSPECTED,
    CheckOutcome,
    Verdict,
    beats,
    check,
)
from qadv.evaluate.masking.output import masking_markdown, write_masking_report
from qadv.evaluate.masking.probe import Probe
from qadv.evaluate.masking.report import masking_report

__all__ = [
    "CHECKS",
    "FD_LADDER",
    "FD_NOISE_FACTOR",
    "PASS",
    "SATURATION_GAP",
    "SKIPPED",
    "SUSPECTED",
    "CheckOutcome",
    "MaskingConfig",
    "Probe",
    "Verdict",
    "beats",
    "check",
    "compute_epsilon",
    "masking_markdown",
    "masking_report",
    "write_masking_report",
]
