"""Inference runtime: runners, tiling and (later) video sources/sinks.

This package sits at the bottom of the dependency graph: it imports nothing of the training
side, and imports torch only inside the torch runner, so a Jetson can run it with TensorRT +
numpy alone.
"""
