"""Attacks for (quantized) networks, all on one protocol (``qadv.attacks.protocol``).

Any JAX ``logits_fn`` mapping ``[0, 1]`` images ``(B, H, W, C)`` to logits ``(B, d)``
works; this package never imports ``qadv.models``.

- functions: ``pgd``, ``fgsm`` (PGD++/FGSM++ with ``temperature=njs(...)/hns()/fixed(β)``),
  ``make_pgd`` for custom loops;
- the protocol: ``registry.make(name, **options)`` builds any registered attack config,
  ``attack(config, logits_fn, x, y, key=...)`` runs it and returns an ``AttackResult``
  (per-example adversarial image, success, margin, perturbation norm, queries).

Example:
    >>> import jax, jax.numpy as jnp
    >>> from qadv import attacks
    >>> f = lambda x: jnp.concatenate([x.reshape(1, -1), -x.reshape(1, -1)], axis=1)
    >>> adv = attacks.pgd(f, jnp.full((1, 1, 1, 1), 0.5), jnp.array([0]), key=jax.random.key(0),
    ...                   eps=0.1, step_size=0.05, steps=4, temperature=attacks.hns())
    >>> adv.shape
    (1, 1, 1, 1)
"""

from qadv.attacks import registry
from qadv.attacks.gradient import (
    Attack,
    AttackInfo,
    FGSMConfig,
    PGDConfig,
    PGDState,
    fgsm,
    make_pgd,
    pgd,
    restart_keys,
    run_attack,
    scaled_loss_grad,
    start_and_run,
)
from qadv.attacks.norms import L2, LINF, NORMS, Norm, get_norm
from qadv.attacks.protocol import (
    AttackContext,
    AttackResult,
    attack,
    example_keys,
    execute,
    prepare,
)
from qadv.attacks.temperature import HNS, NJS, BetaInfo, Fixed, fixed, hns, njs

# Attack modules register themselves on import; keep them below the core imports.
from qadv.attacks import apgd, fab, deepfool, presets, square, transfer  # noqa: F401  isort: skip

__all__ = [
    "HNS",
    "L2",
    "LINF",
    "NJS",
    "NORMS",
    "Attack",
    "AttackContext",
    "AttackInfo",
    "AttackResult",
    "BetaInfo",
    "FGSMConfig",
    "Fixed",
    "Norm",
    "PGDConfig",
    "PGDState",
    "attack",
    "example_keys",
    "execute",
    "fgsm",
    "fixed",
    "get_norm",
    "hns",
    "make_pgd",
    "njs",
    "pgd",
    "prepare",
    "registry",
    "restart_keys",
    "run_attack",
    "scaled_loss_grad",
    "start_and_run",
]
