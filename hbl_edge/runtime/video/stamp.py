"""Frame stamps: a number written into the picture as black/white blocks, read back after
encoding, streaming and decoding (and even enhancement): how latency benchmarks match a
received frame to the moment it was sent, without trusting any timestamp of the stream.

Layout: a band of ``2 + bits`` square blocks along the top edge, of side ``block`` pixels
(``width // (2 + bits)`` by default, at most 16): a white and a black reference block, then the
bits of the number, most significant first (white = 1). Reading thresholds each block's centre
at the midpoint of the two reference blocks, so a brightness or contrast change (an enhancement
model) does not flip bits.
"""

from __future__ import annotations

import numpy as np

BITS = 16
WHITE, BLACK = 235, 16


def _block(width: int, bits: int) -> int:
    b = min(16, width // (2 + bits))
    if b < 4:
        raise ValueError(f"a {width}-pixel-wide frame is too narrow for a {bits}-bit stamp (needs {4 * (2 + bits)})")
    return b


def write_stamp(image: np.ndarray, number: int, bits: int = BITS) -> np.ndarray:
    """Write ``number mod 2**bits`` into the top band of ``image`` (H×W×3 uint8, in place); returns it."""
    b = _block(image.shape[1], bits)
    if image.shape[0] < b:
        raise ValueError(f"a {image.shape[0]}-pixel-high frame is too low for the stamp")
    number %= 1 << bits
    values = [WHITE, BLACK] + [WHITE if (number >> (bits - 1 - i)) & 1 else BLACK for i in range(bits)]
    for i, v in enumerate(values):
        image[:b, i * b:(i + 1) * b] = v
    return image


def read_stamp(image: np.ndarray, bits: int = BITS) -> int | None:
    """The number :func:`write_stamp` wrote, or None when the reference blocks are not there
    (not a stamped frame, or too damaged to read)."""
    b = _block(image.shape[1], bits)
    if image.shape[0] < b:
        return None
    m = max(1, b // 4)  # read the centre of each block: edges blur in the codec
    band = image[m:b - m].astype(np.float32).mean(axis=2)
    means = [float(band[:, i * b + m:(i + 1) * b - m].mean()) for i in range(2 + bits)]
    white, black = means[0], means[1]
    if white - black < 40:
        return None
    threshold = (white + black) / 2
    number = 0
    for v in means[2:]:
        number = (number << 1) | (v > threshold)
    return number


__all__ = ["BITS", "read_stamp", "write_stamp"]
