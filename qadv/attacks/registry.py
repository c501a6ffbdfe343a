"""Name -> attack config: the only place that knows every attack, temperature and preset.

Every attack module registers its config class (and named variants of it, as
``functools.partial``-style defaults, the way optax aliases one general transformation)
when ``qadv.attacks`` is imported. Layers above (evaluate, cli, demo, experiments) look
names up here and never branch on them.

Example:
    >>> from qadv.attacks import registry
    >>> cfg = registry.make("pgd", norm="l2", eps=120 / 255, steps=20, temperature="hns")
    >>> cfg.label, round(cfg.step_size * 255, 4)          # eta = 2.5 eps / T for L2
    ('PGD++ (HNS) L2', 15.0)
    >>> registry.from_dict(registry.to_dict(cfg)) == cfg
    True
    >>> registry.make("pgd", colour="red")
    Traceback (most recent call last):
    ...
    ValueError: attack 'pgd' has no option 'colour'; its options: ...
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from qadv.attacks.norms import Norm, get_norm
from qadv.attacks.validation import check_choice, check_scalar, is_concrete

__all__ = [
    "AttackConfig",
    "TemperatureConfig",
    "attack_names",
    "build",
    "from_dict",
    "lookup",
    "make",
    "make_temperature",
    "option_names",
    "own_options",
    "preset",
    "preset_names",
    "register",
    "register_preset",
    "register_temperature",
    "temperature_names",
    "temperatures",
    "to_dict",
]


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """Base of every attack config: the threat model it is scored in.

    Subclasses are frozen dataclasses (hashable: a config is a static argument of the
    compiled run), set ``kind`` (the family name, used in result files) and implement
    ``run``; they extend ``validate`` and override ``label``/``prepare`` as needed.
    """

    kind: ClassVar[str] = ""
    minimum_norm: ClassVar[bool] = False
    """True for attacks that report the smallest adversarial point they find even beyond
    ``eps`` (FAB, DeepFool): their records answer radii above ``eps`` too."""

    norm: str = "linf"
    eps: float = 8 / 255

    @property
    def geometry(self) -> Norm:
        return get_norm(self.norm)

    def validate(self, *, zero_radius: bool = False) -> None:
        """Raise a one-line ``ValueError`` on a bad option. ``zero_radius``: ``eps = 0`` (and
        a zero step) is allowed, as the direct functions ``pgd``/``fgsm`` allow it (a
        no-op attack); a registered attack in a table needs a radius ``> 0``."""
        get_norm(self.norm)
        check_scalar("eps", self.eps, allow_zero=zero_radius)
        if is_concrete(self.eps):
            self.geometry.check_eps(self.eps)

    def validate_classes(self, d: int) -> None:
        """Raise a one-line ``ValueError`` if the attack cannot run on ``d`` classes (checked
        once the model's output is known)."""
        return None

    def validate_image_size(self, size: int) -> None:
        """Raise a one-line ``ValueError`` if ``eps`` exceeds the ball of the ``[0, 1]`` box
        of images of ``size`` values (pixel units; a traced radius is not checked)."""
        if is_concrete(self.eps):
            self.geometry.check_eps(self.eps, int(size))

    @property
    def label(self) -> str:
        return f"{self.kind.upper()} {self.geometry.label}"

    def prepare(self, logits_fn, context) -> Any:
        return ()

    def run(self, data, logits_fn, x, y, keys):
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class TemperatureConfig:
    """Base of temperature configs (β rules for gradient attacks; see ``temperature``).

    ``build(logits_fn, context)`` returns the strategy pytree, or ``None`` for β = 1;
    ``suffix`` is what it adds to an attack's label (``"++ (HNS)"``, ``""``).
    """

    kind: ClassVar[str] = ""

    def validate(self) -> None:
        return None

    @property
    def suffix(self) -> str:
        return f"++ ({self.kind.upper()})"

    def build(self, logits_fn, context) -> Any:
        raise NotImplementedError


_ATTACKS: dict[str, tuple[type, dict[str, Any]]] = {}
_KINDS: dict[str, type] = {}
_TEMPERATURES: dict[str, type] = {}
_PRESETS: dict[str, Callable[..., list]] = {}


def _load_all() -> None:
    import qadv.attacks  # noqa: F401  (attack modules register themselves on import)


def register(name: str, **defaults):
    """Class decorator: register a config class under ``name`` (and its ``kind``).

    Call ``register(name, **defaults)(cls)`` again for a named variant, e.g.
    ``register("apgd-dlr", loss="dlr")(APGDConfig)``.
    """

    def deco(cls):
        if name in _ATTACKS:
            raise ValueError(f"attack {name!r} is registered twice")
        unknown = set(defaults) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"{cls.__name__} has no fields {sorted(unknown)}")
        _ATTACKS[name] = (cls, dict(defaults))
        _KINDS.setdefault(cls.kind, cls)
        return cls

    return deco


def register_temperature(cls):
    """Class decorator: register a temperature config under its ``kind``."""
    _TEMPERATURES[cls.kind] = cls
    return cls


def register_preset(name: str):
    """Function decorator: ``fn(norm, eps, **overrides) -> list of configs``."""

    def deco(fn):
        _PRESETS[name] = fn
        return fn

    return deco


def attack_names() -> tuple[str, ...]:
    _load_all()
    return tuple(_ATTACKS)


def temperature_names() -> tuple[str, ...]:
    _load_all()
    return tuple(_TEMPERATURES)


def preset_names() -> tuple[str, ...]:
    _load_all()
    return tuple(_PRESETS)


def lookup(name: str) -> tuple[type, dict[str, Any]]:
    """The config class registered as ``name`` and the defaults of that named variant.

    Example:
        >>> cls, defaults = lookup("apgd-dlr")
        >>> cls.__name__, defaults
        ('APGDConfig', {'loss': 'dlr'})
    """
    cls, defaults = _lookup(name)
    return cls, dict(defaults)


def temperatures() -> dict[str, type]:
    """Every registered temperature: name -> its config class (a copy of the table).

    Example:
        >>> sorted(temperatures()) == sorted(temperature_names())
        True
    """
    _load_all()
    return dict(_TEMPERATURES)


def _fields(cls) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def own_options(name: str) -> tuple[str, ...]:
    """The fields of the config registered as ``name`` (not its temperature's or, for a
    wrapper, its source attack's): ``"temperature" in own_options(n)`` marks a gradient
    attack."""
    return _fields(_lookup(name)[0])


def option_names(name: str) -> tuple[str, ...]:
    """Options ``make(name, ...)`` accepts (temperature options included where it has one;
    a wrapper with a ``source`` attack accepts its source's options too)."""
    cls, defaults = _lookup(name)
    opts = _fields(cls)
    src = (
        defaults.get(
            "source", next(f.default for f in dataclasses.fields(cls) if f.name == "source")
        )
        if "source" in opts
        else None
    )
    if isinstance(src, str):
        opts = opts + tuple(o for o in option_names(src) if o not in opts)
    if "temperature" in opts:
        extra = {f for t in _TEMPERATURES.values() for f in _fields(t)}
        opts = opts + tuple(sorted(extra - set(opts)))
    return opts


def _lookup(name: str) -> tuple[type, dict[str, Any]]:
    _load_all()
    if not isinstance(name, str) or name not in _ATTACKS:
        raise ValueError(f"unknown attack {name!r}; choose one of: {', '.join(_ATTACKS)}")
    return _ATTACKS[name]


def make_temperature(name: str | TemperatureConfig | None = "none", **options):
    """Build and validate a temperature config by name (``none``, ``fixed``, ``njs``, ``hns``)."""
    _load_all()
    if isinstance(name, TemperatureConfig):
        if options:
            raise ValueError(f"temperature options {sorted(options)} given with a built config")
        name.validate()
        return name
    name = "none" if name is None else name
    check_choice("temperature", name, _TEMPERATURES)
    cls = _TEMPERATURES[name]
    allowed = _fields(cls)
    bad = sorted(set(options) - set(allowed))
    if bad:
        owners = [t for t, c in _TEMPERATURES.items() if bad[0] in _fields(c)]
        hint = f"it belongs to temperature {', '.join(owners)}" if owners else "unknown option"
        raise ValueError(
            f"temperature {name!r} has no option {bad[0]!r} ({hint}); its options: "
            + (", ".join(allowed) or "none")
        )
    cfg = cls(**options)
    cfg.validate()
    return cfg


def make(name: str, **options) -> AttackConfig:
    """Build and validate the attack registered as ``name``.

    Options are the config's fields; for attacks with a ``temperature`` field,
    ``temperature="njs"`` plus that temperature's own options (``rho=...``) build it.
    ``None`` values are dropped (the default applies).
    """
    cfg = build(name, **options)
    cfg.validate()
    return cfg


def build(name: str, **options) -> AttackConfig:
    """:func:`make` without the final ``validate()`` (options and names are still checked):
    for a caller that validates the config itself (e.g. ``pgd(eps=0)``, which allows a
    zero radius)."""
    cls, defaults = _lookup(name)
    options = {k: v for k, v in options.items() if v is not None}
    fields = _fields(cls)
    defaults_of = {**{f.name: f.default for f in dataclasses.fields(cls)}, **defaults}
    if "source" in fields and isinstance(options.get("source", defaults_of["source"]), str):
        # a wrapper attack (transfer): options it lacks configure its source attack
        threat = {k: options.get(k, defaults_of[k]) for k in ("norm", "eps")}
        s_opts = {k: options.pop(k) for k in list(options) if k not in fields}
        options["source"] = make(options.pop("source", defaults_of["source"]), **threat, **s_opts)
    if "temperature" in fields:
        t_fields = {f for t in _TEMPERATURES.values() for f in _fields(t)} - set(fields)
        t_opts = {k: options.pop(k) for k in list(options) if k in t_fields}
        t_name = options.pop("temperature", defaults.get("temperature", "none"))
        options["temperature"] = make_temperature(t_name, **t_opts)
    bad = sorted(set(options) - set(fields))
    if bad:
        known = ", ".join(option_names(name))
        raise ValueError(f"attack {name!r} has no option {bad[0]!r}; its options: {known}")
    return cls(**{**defaults, **options})


def to_dict(config) -> dict[str, Any]:
    """A JSON-able description that :func:`from_dict` turns back into the same config."""
    out: dict[str, Any] = {"kind": config.kind}
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        out[f.name] = to_dict(v) if dataclasses.is_dataclass(v) else v
    return out


def from_dict(d: Mapping[str, Any]):
    """Inverse of :func:`to_dict`."""
    _load_all()
    d = dict(d)
    kind = d.pop("kind", None)
    table = _KINDS if kind in _KINDS else _TEMPERATURES
    if kind not in table:
        raise ValueError(
            f"unknown attack kind {kind!r}; known: {', '.join([*_KINDS, *_TEMPERATURES])}"
        )
    cls = table[kind]
    vals = {}
    for f in dataclasses.fields(cls):
        if f.name in d:
            v = d[f.name]
            if isinstance(v, Mapping) and "kind" in v:
                v = from_dict(v)
            elif isinstance(v, list):
                v = tuple(v)
            vals[f.name] = v
    return cls(**vals)


def preset(name: str, *, norm: str = "linf", eps: float = 8 / 255, **overrides) -> list:
    """The configs of an ensemble preset (``standard``, ``plus-temperature``, ...)."""
    _load_all()
    check_choice("preset", name, _PRESETS)
    return _PRESETS[name](norm=norm, eps=eps, **overrides)
