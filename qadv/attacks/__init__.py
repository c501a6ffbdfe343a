"""Gradient attacks for (quantized) networks: FGSM/PGD and FGSM++/PGD++.

Any JAX ``logits_fn`` mapping ``[0, 1]`` images ``(B, H, W, C)`` to logits ``(B, d)``
works; this package never imports ``qadv.models``.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from qadv import attacks
    >>> f = lambda x: jnp.concatenate([x.reshape(1, -1), -x.reshape(1, -1)], axis=1)
    >>> adv = attacks.pgd(f, jnp.full((1, 1, 1, 1), 0.5), jnp.array([0]), key=jax.random.key(0),
    ...                   eps=0.1, step_size=0.05, steps=4, temperature=attacks.hns())
    >>> adv.shape
    (1, 1, 1, 1)
"""

from qadv.attacks.gradient import Attack, AttackInfo, PGDState, fgsm, make_pgd, pgd, run_attack
from qadv.attacks.norms import L2, LINF, NORMS, Norm, get_norm
from qadv.attacks.temperature import HNS, NJS, BetaInfo, Fixed, fixed, hns, njs

__all__ = [
    "HNS",
    "L2",
    "LINF",
    "NJS",
    "NORMS",
    "Attack",
    "AttackInfo",
    "BetaInfo",
    "Fixed",
    "Norm",
    "PGDState",
    "fgsm",
    "fixed",
    "get_norm",
    "hns",
    "make_pgd",
    "njs",
    "pgd",
    "run_attack",
]
