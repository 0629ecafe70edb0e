"""Paired folders, dataset splits, the embedded dataset and training crops."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hbl_edge import data
from hbl_edge.data import (
    LAYOUTS,
    PairedFolder,
    PairSource,
    TrainSampler,
    UnpairedFolder,
    carve_val,
    embedded,
    open_dataset,
    val_batches,
)
from hbl_edge.errors import ConfigError, DataError
from hbl_edge.shared_data import MISSING_REASON, find_real_data

REAL_LOWLIGHT = find_real_data("lowlight/train") and find_real_data("lowlight")  # or None (hbl_edge.shared_data)


def write_image(path: Path, size: tuple[int, int] = (16, 12), seed: int = 0) -> Path:
    """A random RGB image of size (width, height)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def make_pairs(root: Path, layout: tuple[str, str] = ("low", "high"), names=("a", "b", "c"),
               ext_in: str = ".png", ext_tgt: str = ".png", size=(16, 12)) -> Path:
    for i, name in enumerate(names):
        write_image(root / layout[0] / f"{name}{ext_in}", size, seed=i)
        write_image(root / layout[1] / f"{name}{ext_tgt}", size, seed=100 + i)
    return root


# ------------------------------------------------------------------------- PairedFolder

@pytest.mark.parametrize("layout", LAYOUTS)
def test_detects_every_layout(tmp_path: Path, layout: tuple[str, str]) -> None:
    folder = PairedFolder(make_pairs(tmp_path, layout))
    assert folder.layout == layout
    assert [p.name for p in folder.pairs] == ["a", "b", "c"]
    assert folder.pairs[0].input.parent.name == layout[0]
    assert folder.skipped == []


def test_layout_names_case_insensitive(tmp_path: Path) -> None:
    make_pairs(tmp_path, ("HAZY", "gt"))
    folder = PairedFolder(tmp_path)
    assert folder.layout == ("HAZY", "gt")
    assert len(folder.pairs) == 3


def test_layout_order_prefers_first(tmp_path: Path) -> None:
    make_pairs(tmp_path, ("input", "target"))
    make_pairs(tmp_path, ("low", "high"))
    assert PairedFolder(tmp_path).layout == ("low", "high")
    custom = PairedFolder(tmp_path, layouts=[("input", "target"), ("low", "high")])
    assert custom.layout == ("input", "target")


def test_no_layout_lists_expected_and_found(tmp_path: Path) -> None:
    write_image(tmp_path / "photos" / "a.png")
    with pytest.raises(DataError) as info:
        PairedFolder(tmp_path)
    message = str(info.value)
    assert "low/+high/" in message and "hazy/+GT/" in message and "photos/" in message
    assert "\n" not in message


def test_missing_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such folder"):
        PairedFolder(tmp_path / "nope")
    (tmp_path / "low").mkdir()
    (tmp_path / "high").mkdir()
    with pytest.raises(DataError, match="no images"):
        PairedFolder(tmp_path)


def test_stem_matching_across_extensions(tmp_path: Path) -> None:
    make_pairs(tmp_path, ("raw", "reference"), ext_in=".jpg", ext_tgt=".png")
    folder = PairedFolder(tmp_path)
    assert [(p.input.name, p.target.name) for p in folder.pairs] == [
        ("a.jpg", "a.png"), ("b.jpg", "b.png"), ("c.jpg", "c.png")]


def _messy(root: Path) -> Path:
    make_pairs(root, names=("a", "b"))
    write_image(root / "low" / "only_in.png")
    write_image(root / "high" / "only_tgt.png")
    write_image(root / "low" / "big.png", (20, 12))
    write_image(root / "high" / "big.png", (16, 12))
    return root


def test_unmatched_and_size_mismatch_skipped_with_one_warning(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="hbl_edge.data"):
        folder = PairedFolder(_messy(tmp_path))
    assert [p.name for p in folder.pairs] == ["a", "b"]
    reasons = dict(folder.skipped)
    assert set(reasons) == {"only_in.png", "only_tgt.png", "big"}
    assert "20x12 vs 16x12" in reasons["big"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert "3" in text and "only_in.png" in text and "big" in text


def test_strict_raises_naming_the_files(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        PairedFolder(_messy(tmp_path), strict=True)
    message = str(info.value)
    assert all(name in message for name in ("only_in.png", "only_tgt.png", "big"))
    assert "\n" not in message


def test_exif_rotated_pair_is_not_a_size_mismatch(tmp_path: Path) -> None:
    write_image(tmp_path / "low" / "a.png", (12, 16))  # stored portrait ...
    exif = Image.Exif()
    exif[0x0112] = 6  # ... displayed landscape, like the target
    Image.open(tmp_path / "low" / "a.png").save(tmp_path / "low" / "a.png", exif=exif)
    write_image(tmp_path / "high" / "a.png", (16, 12))
    assert [p.name for p in PairedFolder(tmp_path).pairs] == ["a"]


def test_unpaired_folder(tmp_path: Path) -> None:
    write_image(tmp_path / "x.jpg")
    write_image(tmp_path / "y.png")
    (tmp_path / "readme.txt").write_text("hi")
    assert [p.name for p in UnpairedFolder(tmp_path).images] == ["x.jpg", "y.png"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        UnpairedFolder(tmp_path / "empty")


# ---------------------------------------------------------------------------- PairSource

def test_corrupt_files_skipped_counted_and_warned(tmp_path: Path, caplog) -> None:
    make_pairs(tmp_path, names=("a", "b", "c", "d"), size=(64, 64))
    (tmp_path / "low" / "b.png").write_bytes(b"garbage" * 20)  # header unreadable
    cut = (tmp_path / "high" / "c.png").read_bytes()
    (tmp_path / "high" / "c.png").write_bytes(cut[: len(cut) // 2])  # header fine, truncated
    with caplog.at_level(logging.WARNING, logger="hbl_edge.data"):
        source = open_dataset(tmp_path, "lowlight", "test")
    assert source.names == ["a", "d"]
    assert len(source) == 2
    assert {name for name, _ in source.skipped} == {"b", "c"}
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "b" in text and "c" in text
    name, inp, tgt = source.load(1)
    assert name == "d" and inp.shape == tgt.shape == (64, 64, 3)


def test_corrupt_files_raise_when_strict(tmp_path: Path) -> None:
    make_pairs(tmp_path, names=("a", "b"), size=(64, 64))
    cut = (tmp_path / "high" / "b.png").read_bytes()
    (tmp_path / "high" / "b.png").write_bytes(cut[: len(cut) // 2])
    with pytest.raises(DataError, match="b \\(corrupt"):
        open_dataset(tmp_path, "lowlight", "test", strict=True)


def test_source_loads_lazily_and_caches(tmp_path: Path) -> None:
    source = open_dataset(make_pairs(tmp_path), "lowlight", "test")
    first = source.load(0)
    assert source.load(0)[1] is first[1]  # cached
    assert [s[0] for s in source] == ["a", "b", "c"]
    with pytest.raises(IndexError):
        source.load(3)


# ------------------------------------------------------------------------- open_dataset

def test_open_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such dataset folder"):
        open_dataset(tmp_path / "nope", "lowlight", "train")
    with pytest.raises(ConfigError, match="split"):
        open_dataset(tmp_path, "lowlight", "training")
    with pytest.raises(ConfigError, match="task"):
        open_dataset(tmp_path, "deblur", "train")


def test_val_carving_deterministic_and_disjoint(tmp_path: Path) -> None:
    names = [f"im{i:02d}" for i in range(20)]
    make_pairs(tmp_path / "train", names=names)
    train = open_dataset(tmp_path, "lowlight", "train", seed=3, val_fraction=0.2)
    val = open_dataset(tmp_path, "lowlight", "val", seed=3, val_fraction=0.2)
    assert len(val) == 4 and len(train) == 16
    assert set(train.names).isdisjoint(val.names)
    assert set(train.names) | set(val.names) == set(names)
    again = open_dataset(tmp_path, "lowlight", "val", seed=3, val_fraction=0.2)
    assert again.names == val.names
    other = open_dataset(tmp_path, "lowlight", "val", seed=4, val_fraction=0.2)
    assert other.names != val.names
    assert carve_val(list(reversed(names)), 3, 0.2) == set(val.names)  # order-independent
    with pytest.raises(DataError, match="test"):
        open_dataset(tmp_path, "lowlight", "test")


def test_flat_layout_serves_every_split(tmp_path: Path) -> None:
    make_pairs(tmp_path, ("hazy", "GT"), names=[f"h{i}" for i in range(10)])
    train = open_dataset(tmp_path, "dehaze", "train")
    val = open_dataset(tmp_path, "dehaze", "val")
    test = open_dataset(tmp_path, "dehaze", "test")
    assert len(val) == 1 and len(train) == 9 and len(test) == 10
    assert set(train.names).isdisjoint(val.names)


def test_split_folders_val_and_paired(tmp_path: Path) -> None:
    make_pairs(tmp_path / "Train", ("trainA", "trainB"), names=["t1", "t2", "t3"])
    make_pairs(tmp_path / "Val", ("trainA", "trainB"), names=["v1"])
    make_pairs(tmp_path / "paired", ("trainA", "trainB"), names=["p1", "p2"])
    assert open_dataset(tmp_path, "underwater", "train").names == ["t1", "t2", "t3"]
    assert open_dataset(tmp_path, "underwater", "val").names == ["v1"]
    assert open_dataset(tmp_path, "underwater", "test").names == ["p1", "p2"]


def test_too_few_pairs_to_carve(tmp_path: Path) -> None:
    make_pairs(tmp_path, names=["only"])
    with pytest.raises(DataError, match="too few"):
        open_dataset(tmp_path, "lowlight", "train")


# ---------------------------------------------------------------------- embedded dataset

@pytest.mark.parametrize("task", ["lowlight", "dehaze", "underwater"])
def test_embedded_sizes_and_determinism(task: str) -> None:
    train, val, test = (embedded(task, s) for s in ("train", "val", "test"))
    assert len(train) == 6 and len(val) == 12 and len(test) == 12
    assert train.degrade is not None and val.degrade is None
    for source in (val, test):
        for i in range(len(source)):
            _, inp, tgt = source.load(i)
            assert inp.shape == tgt.shape and inp.dtype == np.float32
            assert tgt.shape[0] <= 256 and 60 <= tgt.shape[1] <= 120
            assert not np.array_equal(inp, tgt)
    reference = [test.load(i)[1].copy() for i in range(len(test))]
    data._embedded_source.cache_clear()
    data._embedded_regions.cache_clear()
    rebuilt = embedded(task, "test")
    assert rebuilt is not test
    for i, ref in enumerate(reference):
        np.testing.assert_array_equal(rebuilt.load(i)[1], ref)
    _, inp, tgt = embedded(task, "train").load(0)  # synthetic: degraded per index
    assert inp.shape == tgt.shape and tgt.shape[1] >= 200


def test_embedded_splits_share_no_pixels() -> None:
    regions = data._embedded_regions()
    for name, train in regions["train"]:
        val = dict(regions["val"])[name]
        test = dict(regions["test"])[name]
        top = (train.shape[0] - val.shape[0]) // 2
        train_cols = {train[top:top + val.shape[0], x].tobytes() for x in range(train.shape[1])}
        for region in (val, test):
            assert all(region[:, x].tobytes() not in train_cols for x in range(region.shape[1]))
        assert {val[:, x].tobytes() for x in range(val.shape[1])}.isdisjoint(
            test[:, x].tobytes() for x in range(test.shape[1]))


def test_embedded_splits_differ_between_tasks() -> None:
    low, haze = embedded("lowlight", "val").load(0), embedded("dehaze", "val").load(0)
    np.testing.assert_array_equal(low[2], haze[2])  # same clean region
    assert low[1].mean() < haze[1].mean()


# --------------------------------------------------------------------------- TrainSampler

def test_sampler_deterministic_per_step_and_resumable() -> None:
    sampler = TrainSampler("embedded", "underwater", crop=48, batch_size=3, seed=5)
    x0, y0 = sampler.batch(0)
    x1, _ = sampler.batch(1)
    assert x0.shape == y0.shape == (3, 3, 48, 48) and x0.dtype == torch.float32
    assert not torch.equal(x0, x1)
    resumed = TrainSampler("embedded", "underwater", crop=48, batch_size=3, seed=5)
    xr, yr = resumed.batch(1)  # a fresh sampler at step 1 reproduces step 1 exactly
    assert torch.equal(xr, x1)
    again, _ = sampler.batch(0)
    assert torch.equal(again, x0)
    other, _ = TrainSampler("embedded", "underwater", crop=48, batch_size=3, seed=6).batch(0)
    assert not torch.equal(other, x0)


def _relation_source(sizes=((40, 50), (64, 30))) -> PairSource:
    """Pairs with input = 0.5·target on random content, so any misalignment shows."""
    rng = np.random.default_rng(0)
    samples = []
    for i, (h, w) in enumerate(sizes):
        target = rng.random((h, w, 3), dtype=np.float32)
        samples.append((f"s{i}", 0.5 * target, target))
    return PairSource.from_arrays(samples, description="test pairs")


def test_augmentation_keeps_pairs_aligned() -> None:
    sampler = TrainSampler(_relation_source(), "lowlight", crop=24, batch_size=8, seed=0)
    for step in range(10):
        inputs, targets = sampler.batch(step)
        torch.testing.assert_close(inputs, 0.5 * targets, rtol=0, atol=0)


def test_augmentation_uses_the_symmetries() -> None:
    flat = PairSource.from_arrays([("g", *(2 * [np.arange(16 * 16 * 3, dtype=np.float32)
                                                .reshape(16, 16, 3) / 768]))],
                                  description="one image")
    seen = set()
    plain = TrainSampler(flat, "lowlight", crop=16, batch_size=1, augment=False)
    assert torch.equal(plain.batch(0)[0][0], torch.from_numpy(flat.load(0)[1].transpose(2, 0, 1)))
    aug = TrainSampler(flat, "lowlight", crop=16, batch_size=1, augment=True)
    for step in range(64):
        seen.add(aug.batch(step)[0].numpy().tobytes())
    assert len(seen) == 8  # the 8 symmetries of the square, all reachable


def _quarter_task():
    """The low-light task with a formation model that is easy to recognise: input = target / 4."""
    import dataclasses

    from hbl_edge.tasks import get_task

    return dataclasses.replace(get_task("lowlight"), degrade=lambda clean, rng: 0.25 * clean)


def test_synthetic_mix_zero_draws_what_a_plain_sampler_draws() -> None:
    plain = TrainSampler(_relation_source(), "lowlight", crop=24, batch_size=4, seed=3)
    mixed = TrainSampler(_relation_source(), _quarter_task(), crop=24, batch_size=4, seed=3, synthetic_mix=0.0)
    for step in range(3):
        for a, b in zip(plain.batch(step), mixed.batch(step)):
            assert torch.equal(a, b)


def test_synthetic_mix_replaces_inputs_by_the_formation_model_of_the_target() -> None:
    always = TrainSampler(_relation_source(), _quarter_task(), crop=24, batch_size=4, seed=0, synthetic_mix=1.0)
    inputs, targets = always.batch(0)
    torch.testing.assert_close(inputs, 0.25 * targets, rtol=0, atol=0)  # aligned, augmented alike
    half = TrainSampler(_relation_source(), _quarter_task(), crop=24, batch_size=8, seed=0, synthetic_mix=0.5)
    ratios = []
    for step in range(8):
        inputs, targets = half.batch(step)
        ratios += (inputs.sum((1, 2, 3)) / targets.sum((1, 2, 3))).tolist()
    assert all(abs(r - 0.25) < 1e-5 or abs(r - 0.5) < 1e-5 for r in ratios)
    synthetic = sum(abs(r - 0.25) < 1e-5 for r in ratios) / len(ratios)
    assert 0.3 < synthetic < 0.7  # 64 coin flips at p = 0.5


def test_synthetic_mix_is_a_probability() -> None:
    with pytest.raises(ConfigError, match="synthetic-mix"):
        TrainSampler(_relation_source(), "lowlight", crop=24, synthetic_mix=1.5)


def test_small_images_are_reflect_padded() -> None:
    source = _relation_source(sizes=((10, 7),))
    inputs, targets = TrainSampler(source, "lowlight", crop=32, batch_size=2).batch(0)
    assert inputs.shape == (2, 3, 32, 32)
    torch.testing.assert_close(inputs, 0.5 * targets, rtol=0, atol=0)


def test_val_batches_full_and_cropped() -> None:
    source = _relation_source()
    full = list(val_batches(source))
    assert [(n, tuple(x.shape)) for n, x, _ in full] == [("s0", (1, 3, 40, 50)), ("s1", (1, 3, 64, 30))]
    cropped = list(val_batches(source, crop=32))
    assert [tuple(x.shape) for _, x, _ in cropped] == [(1, 3, 32, 32), (1, 3, 32, 30)]
    for _, x, y in cropped:
        torch.testing.assert_close(x, 0.5 * y)


# ------------------------------------------------------------------------- real datasets

@pytest.mark.skipif(REAL_LOWLIGHT is None, reason=MISSING_REASON)
def test_real_lowlight_layouts() -> None:
    train_only = open_dataset(REAL_LOWLIGHT / "train", "lowlight", "train")
    assert len(train_only) > 0
    name, inp, tgt = train_only.load(0)
    assert inp.shape == tgt.shape and inp.mean() < tgt.mean()
    test = open_dataset(REAL_LOWLIGHT, "lowlight", "test")  # paired/ counts as test
    assert len(test) > 0 and "paired" in test.description
    val = open_dataset(REAL_LOWLIGHT, "lowlight", "val")
    train = open_dataset(REAL_LOWLIGHT, "lowlight", "train")
    assert set(val.names).isdisjoint(train.names) and len(val) >= 1
    inputs, targets = TrainSampler(train, "lowlight", crop=64, batch_size=2).batch(0)
    assert inputs.shape == targets.shape == (2, 3, 64, 64)
