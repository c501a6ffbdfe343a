"""Exact L∞ robustness of small binarised MLPs (MILP), brute force, IPROP, gap to truth.

- :func:`extract_network`: the eval-mode function of an ``mlp`` model as numpy layers;
- :func:`exact_robustness`, :func:`verify_batch`, :func:`minimal_linf`: mixed-integer
  programming with ``scipy.optimize.milp`` (HiGHS);
- :func:`enumerate_robustness`: brute force over activation patterns (tests);
- :func:`iprop`: the IPROP target-propagation attack on BNN-WAQ MLPs;
- :func:`gap_to_truth`: exact robust accuracy against attacks, and the flip-rate curves.
"""
