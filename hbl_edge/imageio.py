"""Image files in and out: every kind of file becomes H×W×3 float32 RGB in [0, 1].

Restoration data comes from many sources (phone JPEGs with EXIF rotation, 16-bit PNG/TIFF
exports of RAW files, palette GIF-like PNGs, scanned CMYK, grayscale underwater frames), and
every consumer of this package wants one thing: an H×W×3 float32 RGB array in [0, 1]. This
module is the single place where that conversion happens.

Value scaling is by storage depth, never by content:

    8-bit    v / 255          (modes '1', 'L', 'P', 'RGB', 'RGBA', 'LA', 'CMYK', ...)
    16-bit   v / 65535        (modes 'I;16*', 16-bit colour PNG, 16-bit TIFF)
    'I'      v / 65535        (32-bit integer; Pillow uses it for 16-bit grayscale data)
    'F'      v                (float; assumed already in [0, 1], clipped)

Alpha is dropped (not composited): a restoration target has no background to composite on.

Pillow truncates 16-bit colour PNGs to 8 bits, which destroys dark low-light frames whose
content lives in the low byte. Those files are decoded here with a small numpy PNG decoder
(`_read_png16`); 16-bit colour TIFFs go through ``tifffile`` (a scikit-image dependency).

torch is imported lazily so that this module also serves the torch-free runtime.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from hbl_edge.errors import DataError, ImageLoadError
from hbl_edge.runio import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    import torch

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
)

# Pillow format name and save options per extension (lower case).
_SAVE_FORMATS: dict[str, tuple[str, dict[str, Any]]] = {
    ".png": ("PNG", {}),
    ".jpg": ("JPEG", {"quality": 95}),
    ".jpeg": ("JPEG", {"quality": 95}),
    ".bmp": ("BMP", {}),
    ".tif": ("TIFF", {}),
    ".tiff": ("TIFF", {}),
    ".webp": ("WEBP", {"quality": 95}),
}

_EXIF_ORIENTATION = 0x0112
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Errors that Pillow, zlib and tifffile raise for unreadable files.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, zlib.error, struct.error,
                  Image.DecompressionBombError, IndexError, KeyError)


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` has one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files directly inside ``folder`` (not recursive), sorted by name.

    Hidden files (``.name``, e.g. macOS ``._x.jpg`` resource forks) are ignored.
    Raises :class:`DataError` when ``folder`` is not a directory.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder; pass a folder that contains images")
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and is_image_file(p))


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


def _load_error(path: Path, why: str) -> ImageLoadError:
    return ImageLoadError(f"{path}: cannot read image ({why}); replace or remove this file")


# ----------------------------------------------------------------------------------- load

def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file as RGB.

    Args:
        path: any file Pillow can open (PNG, JPEG, BMP, TIFF, WebP, ...).

    Returns:
        H×W×3 float32 array in [0, 1], EXIF orientation applied (the array is upright).

    Raises:
        ImageLoadError: missing, unreadable, corrupt or truncated file (one line, names it).
    """
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(f"{path}: no such image file; check the path")
    try:
        array, orientation = _decode(path)
    except ImageLoadError:
        raise
    except _DECODE_ERRORS as err:
        raise _load_error(path, _one_line(err)) from err
    rgb = _to_rgb(_normalise(array, path), path)
    return np.ascontiguousarray(_orient(rgb, orientation), dtype=np.float32)


def _decode(path: Path) -> tuple[np.ndarray, int]:
    """Pixels in their stored depth and channel count, plus the EXIF orientation (1..8)."""
    with Image.open(path) as im:
        if im.format == "PNG" and _is_png16_colour(path):
            return _read_png16(path), exif_orientation(im)
        if im.format == "TIFF" and im.mode not in ("I;16", "I;16B", "I;16L", "I", "F") \
                and _tiff_bits(im) > 8:
            return _read_tiff_deep(path, im), exif_orientation(im)
        im.load()  # decode now, so truncation surfaces here and not later
        orientation = exif_orientation(im)
        if im.mode.startswith("I;16"):
            return np.asarray(im).astype(np.uint16), orientation
        if im.mode in ("I", "F"):
            return np.asarray(im), orientation
        if im.mode == "L":
            return np.asarray(im), orientation
        # '1', 'P', 'PA', 'LA', 'RGBA', 'CMYK', 'YCbCr', ...: Pillow's own conversion is right
        # (palette lookup, CMYK inversion); alpha is dropped.
        return np.asarray(im.convert("RGB")), orientation


def exif_orientation(im: Image.Image) -> int:
    """EXIF orientation (1..8, 1 = upright) of an open image, without decoding pixels.

    PNG's ``getexif()`` decodes the whole image to look for a trailing eXIf chunk, so for
    PNG only what is already parsed is used: an eXIf chunk before the pixel data (where
    writers put it), or any eXIf once the image is loaded. A malformed EXIF block means 1.
    """
    try:
        if im.format == "PNG":
            exif = Image.Exif()
            if "exif" in im.info:
                exif.load(im.info["exif"])
        else:
            exif = im.getexif()
        value = int(exif.get(_EXIF_ORIENTATION, 1) or 1)
    except Exception:  # EXIF is metadata: never let a broken block lose the pixels
        return 1
    return value if 1 <= value <= 8 else 1


def _normalise(array: np.ndarray, path: Path) -> np.ndarray:
    """Scale by storage depth (see module docstring) to float32 in [0, 1]."""
    if array.dtype == np.uint8 or array.dtype == np.bool_:
        return array.astype(np.float32) / (1.0 if array.dtype == np.bool_ else 255.0)
    if array.dtype.kind in "ui":  # uint16, big-endian uint16, int32 ('I')
        return np.clip(array.astype(np.float32) / 65535.0, 0.0, 1.0)
    out = np.nan_to_num(array.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    if out.size and (out.min() < -1e-3 or out.max() > 1.0 + 1e-3):
        log.warning("%s: float image has values in [%.3g, %.3g]; clipping to [0, 1]",
                    path, float(out.min()), float(out.max()))
    return np.clip(out, 0.0, 1.0)


def _to_rgb(array: np.ndarray, path: Path) -> np.ndarray:
    """Gray -> replicated to 3 channels; gray+alpha / RGBA -> alpha dropped."""
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim == 3 and array.shape[2] in (1, 2):
        return np.repeat(array[:, :, :1], 3, axis=2)
    if array.ndim == 3 and array.shape[2] >= 3:
        return array[:, :, :3]
    raise _load_error(path, f"unsupported pixel layout {array.shape}")


def _orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (same result as ``PIL.ImageOps.exif_transpose``).

    Done in numpy so that every decoder (Pillow, the 16-bit PNG decoder, tifffile) shares it.
    """
    if orientation == 2:
        return array[:, ::-1]
    if orientation == 3:
        return array[::-1, ::-1]
    if orientation == 4:
        return array[::-1]
    if orientation == 5:
        return array.transpose(1, 0, 2)
    if orientation == 6:
        return np.rot90(array, k=-1)  # 90° clockwise
    if orientation == 7:
        return array.transpose(1, 0, 2)[::-1, ::-1]
    if orientation == 8:
        return np.rot90(array, k=1)  # 90° counter-clockwise
    return array


# ------------------------------------------------------------------- deep-colour decoders

def _is_png16_colour(path: Path) -> bool:
    """16-bit PNG with colour or gray+alpha, non-interlaced: Pillow would truncate it."""
    with open(path, "rb") as f:
        head = f.read(33)
    if len(head) < 33 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        return False
    depth, colour, interlace = head[24], head[25], head[28]
    if depth == 16 and colour in (2, 4, 6) and interlace == 1:
        log.warning("%s: interlaced 16-bit PNG is read at 8-bit precision", path)
    return depth == 16 and colour in (2, 4, 6) and interlace == 0


def _read_png16(path: Path) -> np.ndarray:
    """Decode a non-interlaced 16-bit PNG (colour types 0, 2, 4, 6) to H×W×C uint16.

    PNG stores each row as one filter-type byte followed by filtered bytes; reconstruction
    adds a predictor built from the already reconstructed left (a), up (b) and up-left (c)
    bytes of the same channel: 0 none, 1 a, 2 b, 3 ⌊(a+b)/2⌋, 4 Paeth(a, b, c), mod 256.
    Avg and Paeth are sequential along a row, so the loop runs over anti-diagonals
    (x + y = k), where every dependency lies on an earlier diagonal: H + W numpy steps.
    """
    data = path.read_bytes()
    pos, chunks, header = 8, [], None
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if len(body) < length:
            raise _load_error(path, "file is truncated")
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            chunks.append(body)
        elif kind == b"IEND":
            break
    if header is None or not chunks:
        raise _load_error(path, "PNG has no header or no image data")
    width, height, _, colour, _, _, _ = header
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    bpp = 2 * channels
    raw = zlib.decompress(b"".join(chunks))
    if len(raw) < height * (width * bpp + 1):
        raise _load_error(path, "file is truncated")
    rows = np.frombuffer(raw, np.uint8, count=height * (width * bpp + 1))
    rows = rows.reshape(height, width * bpp + 1)
    ftype = rows[:, 0].astype(np.int16)
    if ftype.max(initial=0) > 4:
        raise _load_error(path, "corrupt PNG filter bytes")
    filtered = rows[:, 1:].reshape(height, width, bpp).astype(np.int16)
    recon = np.zeros((height + 1, width + 1, bpp), np.int16)  # zero row/column = outside
    for k in range(height + width - 1):
        ys = np.arange(max(0, k - width + 1), min(height, k + 1))
        xs = k - ys
        a, b, c = recon[ys + 1, xs], recon[ys, xs + 1], recon[ys, xs]
        p = a + b - c
        pa, pb, pc = np.abs(p - a), np.abs(p - b), np.abs(p - c)
        paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
        t = ftype[ys][:, None]
        pred = np.select([t == 1, t == 2, t == 3, t == 4], [a, b, (a + b) >> 1, paeth], 0)
        recon[ys + 1, xs + 1] = (filtered[ys, xs] + pred) & 255
    out = recon[1:, 1:].astype(np.uint8)
    return out.view(">u2").reshape(height, width, channels).astype(np.uint16)


def _tiff_bits(im: Image.Image) -> int:
    bits = getattr(im, "tag_v2", {}).get(258, 8)
    return int(max(bits) if isinstance(bits, tuple) else bits)


def _read_tiff_deep(path: Path, im: Image.Image) -> np.ndarray:
    """16/32-bit colour TIFF via tifffile (Pillow would truncate it to 8 bits)."""
    try:
        import tifffile
    except ImportError:  # pragma: no cover - tifffile ships with scikit-image
        log.warning("%s: deep-colour TIFF read at 8-bit precision (tifffile missing)", path)
        im.load()
        return np.asarray(im.convert("RGB"))
    array = np.asarray(tifffile.imread(path, key=0))
    if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[2] not in (3, 4):
        array = array.transpose(1, 2, 0)  # planar storage
    return array


# ----------------------------------------------------------------------------------- save

def save_image(path: str | os.PathLike[str], image: np.ndarray | torch.Tensor) -> Path:
    """Write an 8-bit image, format chosen by the extension, atomically.

    Args:
        path: destination; parent folders are created. Extensions: see IMAGE_EXTENSIONS
            (JPEG and WebP at quality 95).
        image: H×W×3 (or H×W) numpy float in [0, 1], or a torch tensor 3×H×W / 1×3×H×W
            (1-channel also accepted). Values are clipped, NaN -> 0, rounded to 8 bits:
            v8 = round(255 · clip(v, 0, 1)).

    Returns:
        The path written. The file appears complete or not at all (temp file + rename).
    """
    path = Path(path)
    fmt = _SAVE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: cannot write images with extension '{path.suffix}'; "
                        f"use one of {', '.join(sorted(IMAGE_EXTENSIONS))}")
    array = to_numpy(image) if hasattr(image, "detach") else np.asarray(image)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3):
        raise ValueError(f"save_image expects H×W×3 numpy or 3×H×W tensor, got {array.shape}")
    if array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    array = np.nan_to_num(array.astype(np.float32), nan=0.0)
    pixels = np.round(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)

    with atomic_path(path) as tmp:
        Image.fromarray(pixels, "RGB").save(tmp, format=fmt[0], **fmt[1])
    return path


# ---------------------------------------------------------------------------- conversions

def to_tensor(image: np.ndarray) -> torch.Tensor:
    """H×W×3 numpy -> 3×H×W float32 torch tensor (a contiguous copy)."""
    import torch

    array = np.asarray(image, dtype=np.float32)
    if array.ndim != 3:
        raise ValueError(f"to_tensor expects an H×W×C array, got shape {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """3×H×W or 1×3×H×W torch tensor -> H×W×3 float32 numpy array (detached, on CPU)."""
    array = tensor.detach().to("cpu").float().numpy()
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise ValueError(f"to_numpy expects a C×H×W or 1×C×H×W tensor, got {tuple(tensor.shape)}")
    return np.ascontiguousarray(array.transpose(1, 2, 0))
