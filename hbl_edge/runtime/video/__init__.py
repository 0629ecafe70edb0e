"""Video sources and sinks for ``hbl-edge stream``, chosen by URI as jetson-utils names them.

:mod:`.base` holds the contract (Frame, VideoOptions, the Source and Sink protocols, the URI
parser and the two registries keyed by URI scheme); each scheme's implementation lives in its own
module and registers itself there. The pipeline (``hbl_edge.runtime.pipeline``) knows nothing of
RTP or files: it only calls :func:`open_source` / :func:`open_sink`.

Torch-free, like all of ``runtime/``.
"""

from .base import (  # noqa: F401
    SINKS, SOURCES, Frame, Sink, SinkError, Source, SourceLost, StreamError, Uri, VideoOptions, open_sink,
    open_source, parse_uri,
)
