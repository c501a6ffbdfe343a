"""Quantization policies: the base class, the registry of kinds and the parser of names.

A policy says how a network is quantized. Each kind (``ref``, ``bnn_wq``, ``bnn_waq``,
``mbn``, ``pact``, ``xnor``) is one small frozen dataclass, a subclass of
:class:`QuantPolicy` in its own module, registered with :func:`register_policy`. It answers
every question the layers above ask of a policy, so that none of them branches on its
kind: how a layer of each role quantizes its weights, bias and input
(:meth:`QuantPolicy.quantize_kernel`, :meth:`~QuantPolicy.quantize_bias`,
:meth:`~QuantPolicy.quantize_input`), its bit widths for BOPS
(:meth:`~QuantPolicy.layer_bits`), whether training anneals it or clips its latent weights
(:attr:`~QuantPolicy.anneals`, :attr:`~QuantPolicy.clipped_params`), and the activation of
its exact description for verification (:attr:`~QuantPolicy.exact_activation`).

Every kind shares the fields of :class:`QuantPolicy`, so ``policy.to_dict()`` has the same
keys for all of them and ``QuantPolicy(**policy.to_dict())`` rebuilds the right subclass.
Names such as ``"mbn:3x1"`` and ``"pact4"`` are parsed here, by :func:`parse_policy`, and
nowhere else.

Example:
    >>> p = get_policy("mbn:3x1")
    >>> type(p).__name__, p.name, p.layer_bits("hidden")
    ('MBNPolicy', 'mbn3x1', (3, 1))
    >>> QuantPolicy(**p.to_dict()) == p
    True
    >>> get_policy("mbn:3")
    Traceback (most recent call last):
    ...
    ValueError: unknown quantization policy 'mbn:3'; choose one of: ref, ...
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import jax

from qadv.quant.primitives import WQ_METHODS, check_bits

__all__ = [
    "ROLES",
    "QuantPolicy",
    "check_role",
    "get_policy",
    "option_kinds",
    "parse_policy",
    "policy_class",
    "policy_kinds",
    "register_policy",
    "unregister_policy",
]

ROLES: tuple[str, ...] = ("first", "hidden", "last")

_KINDS: dict[str, type[QuantPolicy]] = {}

ParamFn = Callable[..., jax.Array]
"""``param(name, init_fn, *shape)``: creates or reads a parameter (``flax.linen.Module.param``)."""


def check_role(role: str) -> None:
    """Raise ``ValueError`` unless ``role`` is one of :data:`ROLES`."""
    if role not in ROLES:
        raise ValueError(f"unknown layer role {role!r}; choose one of: " + ", ".join(ROLES))


@dataclasses.dataclass(frozen=True)
class QuantPolicy:
    """How a network is quantized (hashable; used as a Flax module attribute).

    ``QuantPolicy(kind=..., ...)`` returns an instance of the subclass registered for
    ``kind`` (default ``"ref"``).

    Attributes:
        kind: ``"ref"`` (float), ``"bnn_wq"`` (binary weights, real ReLU activations,
            BatchNorm without affine, no scaling factor), ``"bnn_waq"`` (BinaryNet: binary
            weights and activations, real image into the first layer, affine BatchNorm,
            real biases and logits), ``"mbn"`` (ABC-Net M×N), ``"pact"`` (PACT k-bit
            activations + DoReFa k-bit weights), ``"xnor"`` (XNOR-Net), or any kind
            registered with :func:`register_policy`.
        wq_method: BNN weight method during training: ``"bc"`` (default), ``"gd_tanh"``
            or ``"md_tanh_s"``. Evaluation always uses hard ±1 weights. BinaryConnect
            trains with the same ±1 forward pass that evaluation uses; the tanh methods
            train on ``tanh(beta w)`` and need ``beta`` annealed until it saturates
            (``TrainConfig.anneal_end``), else the hard network differs from the trained
            one (BatchNorm statistics included).
        m_bases: MBN weight bases M.
        n_bases: MBN activation bases N.
        bits: PACT bits for weights and activations.
        float_first: keep the first layer entirely in float.
        float_last: keep the last (classifier) layer entirely in float.
        float_bias: keep biases in float for ``bnn_wq`` (otherwise they are binarised
            like the weights). Biases are always float for the other kinds.

    Class attributes a kind sets:
        options: the fields (besides ``kind``) that mean something to this kind.
        forms: extra string forms it parses (e.g. ``"pact:<k>"``), for error messages.
        is_float: the whole network stays in float.
        binary_activations: hidden layers see binarised (or multi-binary) inputs, so the
            architecture's nonlinearity is hardtanh rather than ReLU.
        bn_affine: BatchNorm has learnable scale and bias.
        exact_activation: the hidden activation (``"sign"`` or ``"relu"``) of the exact
            description of an MLP under this policy (:mod:`qadv.verify.network`), or
            ``None`` when the policy has none.

    Example:
        >>> get_policy("mbn", m_bases=3, n_bases=1).name
        'mbn3x1'
    """

    kind: str = "ref"
    wq_method: str = "bc"
    m_bases: int = 3
    n_bases: int = 1
    bits: int = 4
    float_first: bool = False
    float_last: bool = False
    float_bias: bool = False

    options: ClassVar[tuple[str, ...]] = ()
    forms: ClassVar[tuple[str, ...]] = ()
    is_float: ClassVar[bool] = False
    binary_activations: ClassVar[bool] = False
    bn_affine: ClassVar[bool] = True
    exact_activation: ClassVar[str | None] = None

    def __new__(cls, *args, **kwargs):
        if cls is QuantPolicy:  # dispatch on the kind to its registered class
            cls = policy_class(args[0] if args else kwargs.get("kind", "ref"))
        return object.__new__(cls)

    def __post_init__(self):
        registered = policy_class(self.kind)
        if type(self) is not registered:
            raise ValueError(
                f"kind {self.kind!r} belongs to {registered.__name__}, "
                f"not {type(self).__name__}; use QuantPolicy(kind={self.kind!r}, ...)"
            )
        if self.wq_method not in WQ_METHODS:
            raise ValueError(
                f"unknown wq_method {self.wq_method!r}; choose one of: " + ", ".join(WQ_METHODS)
            )
        for field in ("m_bases", "n_bases"):
            v = getattr(self, field)
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 16:
                raise ValueError(f"invalid {field} {v!r}; choose an integer in 1..16")
        check_bits(self.bits)
        for field in ("float_first", "float_last", "float_bias"):
            v = getattr(self, field)
            if not isinstance(v, bool):
                raise ValueError(f"invalid {field} {v!r}; choose True or False")

    # ------------------------------------------------------------------ names

    @property
    def name(self) -> str:
        """Short display name, e.g. ``"ref"``, ``"pact4"``, ``"mbn3x1"``."""
        return self.kind

    @property
    def label(self) -> str:
        """Name for reports, with the training method where the kind shows it."""
        return self.name

    @classmethod
    def parse_suffix(cls, suffix: str) -> dict[str, Any] | None:
        """Options implied by the text after the kind in a name (``"3x1"`` in
        ``"mbn:3x1"``), or ``None`` if the kind has no such form."""
        return None

    def to_dict(self) -> dict:
        """Plain dict of the fields (for checkpoint metadata); inverse of ``QuantPolicy(**d)``."""
        return dataclasses.asdict(self)

    # ------------------------------------------------------------------ layers

    def is_float_layer(self, role: str) -> bool:
        """Whether a layer with ``role`` in {"first", "hidden", "last"} stays in float."""
        check_role(role)
        return (role == "first" and self.float_first) or (role == "last" and self.float_last)

    def quantize_kernel(
        self, kernel: jax.Array, *, role: str, train: bool, anneal=1.0
    ) -> jax.Array:
        """Effective weights of a layer with ``role`` (float layers keep ``kernel``)."""
        if self.is_float_layer(role):
            return kernel
        return self.weights(kernel, train=train, anneal=anneal)

    def quantize_bias(self, bias: jax.Array, *, role: str, train: bool, anneal=1.0) -> jax.Array:
        """Effective bias of a layer with ``role``; float unless the kind says otherwise."""
        return bias

    def quantize_input(self, x: jax.Array, *, role: str, param: ParamFn) -> jax.Array:
        """Input of a layer with ``role``: the first layer and float layers see ``x``.

        ``param`` creates the quantizer's learned parameters (``flax.linen.Module.param``).
        """
        if role == "first" or self.is_float_layer(role):
            return x
        return self.inputs(x, param=param)

    def weights(self, w: jax.Array, *, train: bool, anneal=1.0) -> jax.Array:
        """Weight quantizer of a quantized layer (``anneal``: the tanh sharpness ``beta``)."""
        raise NotImplementedError(f"{type(self).__name__} does not define weights()")

    def inputs(self, x: jax.Array, *, param: ParamFn) -> jax.Array:
        """Input (activation) quantizer of a quantized hidden or last layer."""
        return x

    # ------------------------------------------------------------------ cost

    @property
    def hidden_bits(self) -> tuple[int, int]:
        """``(weight bits, activation bits)`` of a quantized hidden layer for BOPS."""
        raise NotImplementedError(f"{type(self).__name__} does not define hidden_bits")

    def layer_bits(self, role: str) -> tuple[int, int]:
        """``(weight bits, activation bits)`` of a layer with ``role`` in the BOPS convention
        (first and last layers: ``(8, 8)``)."""
        check_role(role)
        return self.hidden_bits if role == "hidden" else (8, 8)

    # ------------------------------------------------------------------ training

    @property
    def anneals(self) -> bool:
        """Whether training anneals a tanh sharpness ``beta`` (GD-tanh, MD-tanh-S)."""
        return False

    @property
    def clipped_params(self) -> tuple[str, ...]:
        """Names of the parameters clipped to ``[-1, 1]`` after every update
        (BinaryConnect's latent weights); empty for none."""
        return ()


# ----------------------------------------------------------------------------- registry


def register_policy(cls: type[QuantPolicy]) -> type[QuantPolicy]:
    """Class decorator: register a frozen :class:`QuantPolicy` subclass under the default
    of its ``kind`` field.

    Example:
        >>> @register_policy
        ... @dataclasses.dataclass(frozen=True)
        ... class Half(QuantPolicy):
        ...     kind: str = "half"
        ...     hidden_bits = (16, 16)
        ...     def weights(self, w, *, train, anneal=1.0):
        ...         return w.astype("bfloat16").astype(w.dtype)
        >>> get_policy("half").layer_bits("hidden")
        (16, 16)
        >>> unregister_policy("half")
    """
    if not (isinstance(cls, type) and issubclass(cls, QuantPolicy)):
        raise ValueError(f"{cls!r} is not a QuantPolicy subclass")
    if not dataclasses.is_dataclass(cls) or not cls.__dataclass_params__.frozen:
        raise ValueError(f"{cls.__name__} must be a frozen dataclass")
    kind = cls.__dataclass_fields__["kind"].default
    if not isinstance(kind, str) or not kind or ":" in kind:
        raise ValueError(f"invalid policy kind {kind!r}; give the class a 'kind' default")
    if kind in _KINDS:
        raise ValueError(f"quantization policy {kind!r} is registered twice")
    _KINDS[kind] = cls
    return cls


def unregister_policy(kind: str) -> None:
    """Remove a registered kind (for plugins and tests)."""
    if kind not in _KINDS:
        raise ValueError(
            f"quantization policy {kind!r} is not registered; registered: " + ", ".join(_KINDS)
        )
    del _KINDS[kind]


def policy_kinds() -> tuple[str, ...]:
    """The registered kinds, in registration order."""
    return tuple(_KINDS)


def policy_class(kind: str) -> type[QuantPolicy]:
    """The class registered for ``kind``."""
    if not isinstance(kind, str) or kind not in _KINDS:
        raise ValueError(
            f"unknown quantization policy {kind!r}; choose one of: " + ", ".join(_KINDS)
        )
    return _KINDS[kind]


def option_kinds(option: str) -> tuple[str, ...]:
    """The registered kinds to which the field ``option`` applies.

    Example:
        >>> option_kinds("wq_method")
        ('bnn_wq', 'bnn_waq')
    """
    return tuple(k for k, cls in _KINDS.items() if option in cls.options)


def parse_policy(name: str) -> tuple[type[QuantPolicy], dict[str, Any]]:
    """The class and the options a policy name says: a kind (``"bnn_wq"``), or a kind with
    a suffix, with or without a colon (``"pact:4"``, ``"pact4"``, ``"mbn:3x1"``).

    Example:
        >>> cls, opts = parse_policy("mbn:3x1")
        >>> cls.__name__, opts
        ('MBNPolicy', {'m_bases': 3, 'n_bases': 1})
    """
    if not isinstance(name, str):
        raise ValueError(f"invalid policy name {name!r}; choose one of: " + ", ".join(_KINDS))
    if name in _KINDS:
        return _KINDS[name], {}
    head, colon, tail = name.partition(":")
    for kind, cls in _KINDS.items():
        if colon:
            suffix = tail if head == kind else ""
        else:
            suffix = name[len(kind) :] if name.startswith(kind) else ""
        opts = cls.parse_suffix(suffix) if suffix else None
        if opts is not None:
            return cls, opts
    forms = [form for cls in _KINDS.values() for form in cls.forms]
    raise ValueError(
        f"unknown quantization policy {name!r}; choose one of: "
        + ", ".join(_KINDS)
        + (f" (or {', '.join(forms)})" if forms else "")
    )


def get_policy(name: str, **opts) -> QuantPolicy:
    """Build a :class:`QuantPolicy` from a name and options.

    Names are the kinds (``ref``, ``bnn_wq``, ``bnn_waq``, ``mbn``, ``pact``, ``xnor``);
    shorthands ``"pact<k>"``/``"pact:<k>"`` (e.g. ``"pact2"``) and
    ``"mbn<M>x<N>"``/``"mbn:<M>x<N>"`` (e.g. ``"mbn:3x1"``) are accepted too.
    Options are the other dataclass fields; they override what the name says.

    Example:
        >>> get_policy("pact2").bits
        2
        >>> get_policy("bnn_wq", wq_method="bc", float_last=True).float_last
        True
    """
    cls, implied = parse_policy(name)
    fields = {f.name for f in dataclasses.fields(cls)} - {"kind"}
    bad = sorted(set(opts) - fields)
    if bad:
        raise ValueError(
            f"unknown policy option {bad[0]!r}; choose from: " + ", ".join(sorted(fields))
        )
    return cls(**{**implied, **opts})
