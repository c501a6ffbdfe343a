"""Transfer attacks: adversarial images crafted on a surrogate model, scored on the target.

Any registered attack can be the ``source``; it runs on ``context.surrogate`` (e.g. the
float model of the same architecture) and only the resulting images meet the target. A
quantized model whose gradients are masked is often broken by images crafted on its
float twin, so a transfer attack stronger than the white-box one is a masking sign
(Athalye et al. 2018).

Example:
    >>> import jax, jax.numpy as jnp
    >>> from qadv import attacks
    >>> from qadv.attacks import registry
    >>> w = jnp.array([[1.0, -1.0]])
    >>> target = lambda x: 1e4 * (x.reshape(x.shape[0], -1) - 0.45) @ w   # saturated
    >>> surrogate = lambda x: (x.reshape(x.shape[0], -1) - 0.45) @ w
    >>> cfg = registry.make("transfer", source="pgd", eps=0.1, steps=5)
    >>> ctx = attacks.AttackContext(surrogate=surrogate)
    >>> res = attacks.attack(cfg, target, jnp.full((1, 1, 1, 1), 0.5), jnp.array([0]),
    ...                      key=jax.random.key(0), context=ctx)
    >>> cfg.label, bool(res.success[0])
    ('Transfer from PGD L∞', True)
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax

from qadv.attacks import registry
from qadv.attacks.protocol import finish

__all__ = ["TransferConfig"]


@registry.register("transfer")
@dataclasses.dataclass(frozen=True)
class TransferConfig(registry.AttackConfig):
    """Run ``source`` (a registered attack name or config) on the surrogate model.

    A name is built with this config's ``norm`` and ``eps`` and its own defaults.
    ``queries`` counts the surrogate's evaluations plus the one target evaluation.
    """

    kind: ClassVar[str] = "transfer"

    source: Any = "pgd"

    def __post_init__(self):
        if isinstance(self.source, str):
            src = registry.make(self.source, norm=self.norm, eps=self.eps)
            object.__setattr__(self, "source", src)

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.source, registry.AttackConfig):
            raise ValueError(
                f"transfer source must be an attack name or config, got {self.source!r}"
            )
        if isinstance(self.source, TransferConfig):
            raise ValueError("a transfer attack's source cannot be another transfer attack")
        if (self.source.norm, self.source.eps) != (self.norm, self.eps):
            raise ValueError(
                f"transfer source threat model ({self.source.norm}, eps={self.source.eps}) "
                f"differs from the transfer attack's ({self.norm}, eps={self.eps})"
            )
        self.source.validate()

    @property
    def label(self) -> str:
        return f"Transfer from {self.source.label}"

    def prepare(self, logits_fn, context):
        surrogate = None if context is None else context.surrogate
        if surrogate is None:
            raise ValueError(
                "a transfer attack needs a surrogate model (AttackContext(surrogate=...), "
                "or --surrogate RUN_FOLDER on the command line)"
            )
        if not isinstance(surrogate, jax.tree_util.Partial):
            surrogate = jax.tree_util.Partial(surrogate)
        return surrogate, self.source.prepare(surrogate, context)

    def run(self, data, logits_fn, x, y, keys):
        surrogate, source_data = data
        crafted = self.source.run(source_data, surrogate, x, y, keys)
        aux = {"surrogate_success": crafted.success}
        return finish(
            logits_fn, x, y, crafted.x_adv, norm=self.geometry, queries=crafted.queries + 1, aux=aux
        )
