"""hbl-edge: Hadamard-based image restoration from search to edge GPUs."""
__version__ = "0.1.0"
