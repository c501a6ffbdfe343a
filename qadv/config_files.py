"""Python config files (big_vision style): a module whose one function returns a config.

``qadv train --config FILE`` (``get_config()``) and ``qadv study --config FILE``
(``config(**options)``) read their files with :func:`load_config_file`, so both report
the same errors, each one line naming the file:

* ``<kind> config file '<path>' not found``;
* ``<kind> config file <path>: SyntaxError: ...`` (the file fails to run);
* ``<kind> config file <path> defines no get_config() function``;
* ``<kind> config file <path>: config() takes no option 'x'; its options: size, tiny``;
* ``<kind> config file <path>: <message>`` (a bad value, raised by the function or by
  ``convert``).

This module imports nothing from qadv (the ground floor).
"""

from __future__ import annotations

import importlib.util
import inspect
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["load_config_file"]


def _module(path: Path, kind: str):
    if not path.is_file():
        raise ValueError(f"{kind} config file {str(path)!r} not found")
    name = f"_qadv_{kind.replace(' ', '_')}_config_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"{kind} config file {path}: cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the file's own error (syntax, import, ...), as one line
        raise ValueError(f"{kind} config file {path}: {type(e).__name__}: {e}") from None
    return module


def _check_options(fn: Callable, function: str, options: Mapping[str, Any]) -> None:
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    bad = sorted(set(options) - set(params))
    if bad:
        raise ValueError(
            f"{function}() takes no option {bad[0]!r}; its options: "
            + (", ".join(params) or "none")
        )


def load_config_file(
    path: str | Path,
    function: str,
    *,
    kind: str,
    options: Mapping[str, Any] | None = None,
    convert: Callable[[Any], Any] | None = None,
) -> Any:
    """Runs the file at ``path`` and returns ``convert(function(**options))``.

    Args:
        path: the Python file.
        function: the name of the function it must define (``get_config``, ``config``).
        kind: what the file configures, for the messages (``training``, ``study``).
        options: keyword arguments of the function (each must be one of its parameters,
            unless it takes ``**kwargs``).
        convert: applied to the function's result (e.g. ``TrainConfig.from_dict``); its
            ``ValueError`` is reported like the function's own.

    Raises:
        ValueError: one line naming the file (see the module docstring).

    Example:
        >>> load_config_file("/nonexistent/cfg.py", "get_config", kind="training")
        Traceback (most recent call last):
        ...
        ValueError: training config file '/nonexistent/cfg.py' not found
    """
    path = Path(path)
    module = _module(path, kind)
    fn = getattr(module, function, None)
    if not callable(fn):
        raise ValueError(f"{kind} config file {path} defines no {function}() function")
    options = dict(options or {})
    try:
        _check_options(fn, function, options)
        result = fn(**options)
        return convert(result) if convert is not None else result
    except ValueError as e:
        raise ValueError(f"{kind} config file {path}: {e}") from None
