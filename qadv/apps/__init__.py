"""Applications built on the library: the command line (:mod:`qadv.apps.cli`), studies
(:mod:`qadv.apps.study`), the paper-experiment runner (:mod:`qadv.apps.repro`,
:mod:`qadv.apps.paper_models`) and ``qadv demo`` (:mod:`qadv.apps.demo`).

The library below (``qadv.attacks``, ``qadv.evaluate``, ``qadv.training``, ...) never
imports from here.
"""
