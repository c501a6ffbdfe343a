"""Studies: a grid of trained networks, each measured the same way, in one table.

A :class:`StudyConfig` is a tuple of :class:`Cell` s (a name, a
:class:`~qadv.training.TrainConfig`, its coordinates in the grid) and one :class:`EvalSpec`
(test images, radii, attacks, ensemble). :func:`run_study` trains every cell (reusing
finished runs), measures it and writes::

    out_dir/runs/<arch>_<policy>_<hash>/    training run folders (shared by equal configs)
    out_dir/cells/<cell>.json                one record per cell (see below)
    out_dir/cells/<cell>/<model hash>/       per-attack result files of that cell
    out_dir/study.json, out_dir/study.md     every cell in one table
    out_dir/plots/*.png                      zero-gradient fraction and the PGD − ensemble
                                             gap against depth, width and epochs

Each cell record holds the training summary (epochs, final training accuracy, wall
time), the clean test accuracy, the signal diagnostics of :func:`qadv.evaluate.diagnose`
(logit-gap quantiles, fraction of top-1 leads over 88, zero-gradient fraction, mean ‖ψ‖,
mean Jacobian singular value) and the robust accuracy of every attack and of the
ensemble at every ε, plus ``worst``: the per-example worst case over all of them.

Resumption: the record is rewritten atomically after every measurement, and every attack
keeps its own result file (and, inside, per-batch partial results), so a killed study
resumes cell by cell, attack by attack and batch by batch. A finished cell whose
configuration is unchanged is read back and its record is not touched. Attack results
live under a hash of the evaluated weights, so a retrained or recalibrated model never
reuses another model's results.

Example:
    >>> from qadv.training import TrainConfig
    >>> cell = Cell("mlp", TrainConfig(arch="mlp", policy="bnn_wq", epochs=1),
    ...             axes={"depth": 1, "width": 256})
    >>> study = StudyConfig(cells=(cell,), eval=EvalSpec(n=8, eps=("8/255",)))
    >>> StudyConfig.from_dict(study.to_dict()) == study
    True
    >>> StudyConfig.from_dict({"cells": [], "colour": 1})
    Traceback (most recent call last):
    ...
    ValueError: unknown StudyConfig key 'colour'; choose from: cells, description, eval, name
"""

from qadv.apps.study.config import (
    PLOT_AXES,
    Cell,
    EvalSpec,
    StudyConfig,
    eps_key,
    load_study_config,
)
from qadv.apps.study.output import study_table
from qadv.apps.study.run import run_study

__all__ = [
    "PLOT_AXES",
    "Cell",
    "EvalSpec",
    "StudyConfig",
    "eps_key",
    "load_study_config",
    "run_study",
    "study_table",
]
