"""hbl-edge: Hadamard-based image restoration from search to edge GPUs.

``import hbl_edge`` stays light (no torch, no onnxruntime, no numpy): the public runtime API is
loaded on first use::

    from hbl_edge import Enhancer          # hbl_edge.runtime.enhancer.Enhancer
"""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"


def _prefer_gcc_unwinder() -> None:
    """Put libgcc_s's C++ unwinder first in the process's global symbol scope.

    Debian's libgstreamer links libunwind, and PyGObject opens it with RTLD_GLOBAL, so once
    GStreamer is loaded (the RTSP/RTP receivers, the RTSP server) every later lazy binding of
    ``_Unwind_Resume`` goes to libunwind's copy. A C++ exception thrown and caught inside
    libstdc++ code (onnxruntime's error translation, torch's ONNX tracer) then aborts the whole
    process instead of becoming a Python exception (measured: ``Gst.init`` then
    ``torch.onnx.export`` aborts; with this, it does not). Loading libgcc_s globally first keeps
    the unwinder libstdc++ expects. It must run before ``gi`` is imported, hence here.
    """
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import os

        ctypes.CDLL("libgcc_s.so.1", mode=os.RTLD_GLOBAL)
    except OSError:  # musl or an unusual libc: nothing to fix there
        pass


_prefer_gcc_unwinder()

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
