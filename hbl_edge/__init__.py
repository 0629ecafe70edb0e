"""hbl-edge: Hadamard-based image restoration from search to edge GPUs.

``import hbl_edge`` stays light (no torch, no onnxruntime, no numpy): the public runtime API is
loaded on first use::

    from hbl_edge import Enhancer          # hbl_edge.runtime.enhancer.Enhancer
"""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public names loaded on first access (PEP 562), so importing the package costs nothing.
_LAZY = {
    "Enhancer": "hbl_edge.runtime.enhancer",
}

if TYPE_CHECKING:  # pragma: no cover
    from .runtime.enhancer import Enhancer  # noqa: F401


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hbl_edge' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(list(globals()) + list(_LAZY))


__all__ = ["Enhancer", "__version__"]
