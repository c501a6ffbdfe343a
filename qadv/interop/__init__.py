"""Bridges from qadv models to other adversarial-robustness libraries (optional extras).

- :mod:`qadv.interop.foolbox`: a qadv model as a ``foolbox.JAXModel``
  (``pip install 'qadv[foolbox]'``).

The bridges import their library only when called, so importing them is always safe.

Example:
    >>> from qadv.interop import foolbox
    >>> foolbox.FOOLBOX_MISSING
    "qadv.interop.foolbox needs foolbox: pip install 'qadv[foolbox]'"
"""

from qadv.interop import foolbox

__all__ = ["foolbox"]
