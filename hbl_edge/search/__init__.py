"""Search: supernet, hypergradient engine, loss (L) and architecture (A) stages, latency model.

Modules are imported explicitly (``from hbl_edge.search.hypergrad import hypergradient``);
this package file deliberately imports nothing, so importing one part of the search never
pulls in the others.
"""
