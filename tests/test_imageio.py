"""Image file io: every kind of file becomes H×W×3 float32 RGB in [0, 1]."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from hbl_edge.errors import DataError, HblError, ImageLoadError
from hbl_edge.imageio import (
    IMAGE_EXTENSIONS,
    _read_png16,
    list_images,
    load_image,
    save_image,
    to_numpy,
    to_tensor,
)

HALF16 = 65535 // 2  # 32767 -> 0.49999


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def write_png16(path: Path, array: np.ndarray, filters: np.ndarray | None = None,
                exif: bytes | None = None) -> Path:
    """Minimal 16-bit PNG encoder (Pillow cannot write 16-bit colour), all 5 row filters.

    ``filters[y]`` chooses row y's filter; bytes are filtered from the original values, which
    is what any encoder does, so the decoder must invert every predictor exactly.
    """
    h, w, c = array.shape
    colour = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    bpp = 2 * c
    raw = array.astype(">u2").view(np.uint8).reshape(h, w, bpp).astype(np.int32)
    filters = np.zeros(h, int) if filters is None else filters
    a = np.zeros_like(raw); a[:, 1:] = raw[:, :-1]
    b = np.zeros_like(raw); b[1:] = raw[:-1]
    cc = np.zeros_like(raw); cc[1:, 1:] = raw[:-1, :-1]
    p = a + b - cc
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - cc)
    paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, cc))
    preds = [np.zeros_like(raw), a, b, (a + b) // 2, paeth]
    body = b"".join(bytes([f]) + ((raw[y] - preds[f][y]) % 256).astype(np.uint8).tobytes()
                    for y, f in enumerate(filters))
    png = (b"\x89PNG\r\n\x1a\n"
           + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0))
           + (_png_chunk(b"eXIf", exif) if exif else b"")
           + _png_chunk(b"IDAT", zlib.compress(body)) + _png_chunk(b"IEND", b""))
    path.write_bytes(png)
    return path


def gradient_rgb(h: int = 6, w: int = 8) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 30, y * 40, (x + y) * 10], axis=2).astype(np.uint8)


def check_rgb(image: np.ndarray, shape: tuple[int, int]) -> None:
    assert image.shape == (*shape, 3)
    assert image.dtype == np.float32
    assert image.min() >= 0.0 and image.max() <= 1.0


# ------------------------------------------------------------------------------ listing

def test_list_images_filters_and_sorts(tmp_path: Path) -> None:
    for name in ["b.PNG", "a.jpg", "c.TIFF", "notes.txt", ".hidden.png", "d.webp"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG", "c.TIFF", "d.webp"]
    assert {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"} == set(IMAGE_EXTENSIONS)


def test_list_images_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a folder"):
        list_images(tmp_path / "nope")


# ------------------------------------------------------------------------ kinds of image

def test_rgb8(tmp_path: Path) -> None:
    pixels = gradient_rgb()
    Image.fromarray(pixels).save(tmp_path / "x.png")
    image = load_image(tmp_path / "x.png")
    check_rgb(image, (6, 8))
    np.testing.assert_allclose(image, pixels / 255.0, atol=1e-6)


@pytest.mark.parametrize("mode", ["L", "1"])
def test_gray8_replicated(tmp_path: Path, mode: str) -> None:
    gray = (np.arange(48).reshape(6, 8) * 5).astype(np.uint8)
    Image.fromarray(gray).convert(mode).save(tmp_path / "g.png")
    image = load_image(tmp_path / "g.png")
    check_rgb(image, (6, 8))
    assert np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 1], image[..., 2])
    if mode == "L":
        np.testing.assert_allclose(image[..., 0], gray / 255.0, atol=1e-6)


def test_la_and_rgba_drop_alpha(tmp_path: Path) -> None:
    pixels = gradient_rgb()
    alpha = np.zeros((6, 8), np.uint8)  # fully transparent: alpha must be ignored, not applied
    Image.fromarray(np.dstack([pixels, alpha]), "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_allclose(load_image(tmp_path / "rgba.png"), pixels / 255.0, atol=1e-6)
    gray = pixels[..., 0]
    Image.fromarray(np.dstack([gray, alpha]), "LA").save(tmp_path / "la.png")
    image = load_image(tmp_path / "la.png")
    check_rgb(image, (6, 8))
    np.testing.assert_allclose(image[..., 1], gray / 255.0, atol=1e-6)


def test_palette(tmp_path: Path) -> None:
    pixels = gradient_rgb()
    pal = Image.fromarray(pixels).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    image = load_image(tmp_path / "p.png")
    check_rgb(image, (6, 8))
    np.testing.assert_allclose(image, np.asarray(pal.convert("RGB")) / 255.0, atol=1e-6)


def test_gray16_i16(tmp_path: Path) -> None:
    Image.fromarray(np.full((4, 5), HALF16, np.uint16)).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    image = load_image(tmp_path / "g16.png")
    check_rgb(image, (4, 5))
    np.testing.assert_allclose(image, 0.5, atol=1e-4)


def test_mode_i_int32(tmp_path: Path) -> None:
    Image.fromarray(np.full((4, 5), HALF16, np.int32), "I").save(tmp_path / "i.tif")
    assert Image.open(tmp_path / "i.tif").mode == "I"
    np.testing.assert_allclose(load_image(tmp_path / "i.tif"), 0.5, atol=1e-4)


def test_rgb16_png_keeps_low_bits(tmp_path: Path) -> None:
    # Low byte content (values < 256) is exactly what Pillow's 8-bit truncation would zero.
    array = np.zeros((5, 7, 3), np.uint16)
    array[..., 0], array[..., 1], array[..., 2] = HALF16, 65535, 200
    write_png16(tmp_path / "rgb16.png", array)
    image = load_image(tmp_path / "rgb16.png")
    check_rgb(image, (5, 7))
    np.testing.assert_allclose(image[0, 0], [HALF16 / 65535, 1.0, 200 / 65535], atol=1e-6)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_png16_decoder_all_filters(tmp_path: Path, channels: int) -> None:
    rng = np.random.default_rng(0)
    array = rng.integers(0, 65536, size=(9, 11, channels)).astype(np.uint16)
    write_png16(tmp_path / "f.png", array, filters=np.arange(9) % 5)
    np.testing.assert_array_equal(_read_png16(tmp_path / "f.png"), array)


def test_rgba16_png_drops_alpha(tmp_path: Path) -> None:
    array = np.zeros((3, 4, 4), np.uint16)
    array[..., 0] = HALF16
    write_png16(tmp_path / "rgba16.png", array)
    np.testing.assert_allclose(load_image(tmp_path / "rgba16.png")[0, 0], [0.5, 0, 0], atol=1e-4)


def test_rgb16_tiff(tmp_path: Path) -> None:
    tifffile = pytest.importorskip("tifffile")
    array = np.full((4, 5, 3), 200, np.uint16)
    array[..., 0] = HALF16
    tifffile.imwrite(tmp_path / "rgb16.tif", array)
    np.testing.assert_allclose(load_image(tmp_path / "rgb16.tif")[0, 0],
                               [HALF16 / 65535, 200 / 65535, 200 / 65535], atol=1e-6)


def test_float_mode_f(tmp_path: Path) -> None:
    Image.fromarray(np.full((4, 5), 0.25, np.float32), "F").save(tmp_path / "f.tif")
    np.testing.assert_allclose(load_image(tmp_path / "f.tif"), 0.25, atol=1e-6)


def test_cmyk(tmp_path: Path) -> None:
    rgb = Image.fromarray(gradient_rgb())
    rgb.convert("CMYK").save(tmp_path / "c.jpg", quality=100)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    image = load_image(tmp_path / "c.jpg")
    check_rgb(image, (6, 8))
    np.testing.assert_allclose(image, np.asarray(rgb) / 255.0, atol=0.1)


def test_exif_orientation_6_rotates(tmp_path: Path) -> None:
    pixels = gradient_rgb(4, 6)
    pixels[0, 0] = [255, 0, 0]  # mark the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(tmp_path / "o.png", exif=exif)
    image = load_image(tmp_path / "o.png")
    assert image.shape == (6, 4, 3)  # 90° clockwise: stored top-left goes to top-right
    np.testing.assert_allclose(image[0, -1], [1, 0, 0])
    reference = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "o.png"))) / 255.0
    np.testing.assert_allclose(image, reference, atol=1e-6)


def test_exif_orientation_on_16_bit_png(tmp_path: Path) -> None:
    array = np.zeros((4, 6, 3), np.uint16)
    array[0, 0] = 65535
    exif = Image.Exif()
    exif[0x0112] = 6
    write_png16(tmp_path / "o16.png", array, exif=exif.tobytes())
    image = load_image(tmp_path / "o16.png")
    assert image.shape == (6, 4, 3)
    np.testing.assert_allclose(image[0, -1], [1, 1, 1])


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_pillow(tmp_path: Path, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(gradient_rgb(3, 5)).save(tmp_path / "o.png", exif=exif)
    reference = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "o.png"))) / 255.0
    np.testing.assert_allclose(load_image(tmp_path / "o.png"), reference, atol=1e-6)


# ------------------------------------------------------------------------------- errors

def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="nope.png"):
        load_image(tmp_path / "nope.png")


def test_corrupt_bytes(tmp_path: Path) -> None:
    (tmp_path / "bad.jpg").write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(ImageLoadError) as info:
        load_image(tmp_path / "bad.jpg")
    message = str(info.value)
    assert "bad.jpg" in message and "\n" not in message
    assert isinstance(info.value, HblError)


@pytest.mark.parametrize("sixteen", [False, True])
def test_truncated_png(tmp_path: Path, sixteen: bool) -> None:
    path = tmp_path / "cut.png"
    if sixteen:
        rng = np.random.default_rng(0)
        write_png16(path, rng.integers(0, 65536, (64, 64, 3)).astype(np.uint16))
    else:
        noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype(np.uint8)
        Image.fromarray(noise).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError) as info:
        load_image(path)
    assert "cut.png" in str(info.value) and "\n" not in str(info.value)


# ------------------------------------------------------------------------- save, convert

@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif", ".webp", ".jpg"])
def test_save_load_roundtrip(tmp_path: Path, ext: str) -> None:
    y, x = np.mgrid[0:16, 0:24] / 24.0
    image = np.stack([x, y, 0.5 * (x + y)], axis=2).astype(np.float32)  # smooth: fair to JPEG
    out = save_image(tmp_path / "deep" / "dir" / f"x{ext}", image)
    assert out.exists()
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temp file left behind
    tol = 0.05 if ext in (".jpg", ".webp") else 0.5 / 255 + 1e-6  # lossy vs 8-bit rounding
    np.testing.assert_allclose(load_image(out), image, atol=tol)


def test_save_clamps_rounds_and_accepts_tensors(tmp_path: Path) -> None:
    image = np.array([[[-0.5, 0.5, 1.7], [0.2, 0.0, 1.0]]], np.float32)
    save_image(tmp_path / "a.png", image)
    assert np.asarray(Image.open(tmp_path / "a.png"))[0].tolist() == [[0, 128, 255], [51, 0, 255]]
    tensor = torch.from_numpy(image.transpose(2, 0, 1).copy())
    save_image(tmp_path / "b.png", tensor)
    save_image(tmp_path / "c.png", tensor[None])
    for name in ["b.png", "c.png"]:
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / name)),
                                      np.asarray(Image.open(tmp_path / "a.png")))


def test_save_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="extension"):
        save_image(tmp_path / "x.gif", np.zeros((2, 2, 3), np.float32))


def test_tensor_numpy_roundtrip() -> None:
    image = np.random.default_rng(0).random((5, 7, 3), dtype=np.float32)
    tensor = to_tensor(image)
    assert tensor.shape == (3, 5, 7) and tensor.dtype == torch.float32
    np.testing.assert_array_equal(to_numpy(tensor), image)
    np.testing.assert_array_equal(to_numpy(tensor[None]), image)
