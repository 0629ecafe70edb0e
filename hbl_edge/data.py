"""Datasets: paired folders, the embedded default dataset, training crops.

Everything that feeds the network goes through a :class:`PairSource`: a list-like of
(name, input H×W×3, target H×W×3) float32 samples in [0, 1], loaded lazily and cached.

Folder layouts (detected in this order, folder names case-insensitive)::

    root/low/       root/high/        LOL (low light)
    root/raw/       root/reference/   UIEB (underwater)
    root/hazy/      root/clear/       RESIDE (haze)
    root/hazy/      root/GT/          RESIDE SOTS / O-HAZE style
    root/trainA/    root/trainB/      EUVP (underwater)
    root/input/     root/target/      generic

Files are paired by stem (``a.jpg`` ↔ ``a.png``). A dataset root may hold split folders
``train/``, ``val/``, ``test/`` (``paired/`` counts as ``test``), each in one of the layouts
above; without ``val/`` a deterministic validation split is carved out of ``train``.

Embedded default dataset (``open_dataset("embedded", task, split)``): six real photographs
shipped inside scikit-image's wheel (``skimage/data``): astronaut (NASA, public domain),
chelsea (Stefan van der Walt, CC0), coffee (Rachel Michetti, CC0), rocket (SpaceX, public
domain), motorcycle_left/right (Middlebury 2014 stereo benchmark, Scharstein et al.); see the
docstrings in ``skimage/data/_fetchers.py`` and scikit-image's BSD-3 licence. They are read
from the installed package, never downloaded. Each photo (longer side ≤ 512) is split by
columns: left 60 % train, next 20 % val, last 20 % test, so splits share no pixels. The
motorcycle pair is a rectified stereo pair (x_right = x_left − disparity, disparity ≤ 60 px
at full size): the right view's train and val regions end ``disparity`` earlier, so no scene
point seen in one split appears in another. Train regions are clean and degraded on the fly;
val and test are fixed: 2 degradations per region from a per-task seed, centre-cropped to
height ≤ 256 and quantised to 8 bits (so they are identical on every machine).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hbl_edge.errors import ConfigError, DataError, ImageLoadError
from hbl_edge.imageio import exif_orientation, list_images, load_image
from hbl_edge.tasks import Task, get_task

log = logging.getLogger(__name__)

LAYOUTS: tuple[tuple[str, str], ...] = (
    ("low", "high"),           # LOL
    ("raw", "reference"),      # UIEB
    ("hazy", "clear"),         # RESIDE
    ("hazy", "GT"),            # RESIDE SOTS, O-HAZE
    ("trainA", "trainB"),      # EUVP
    ("input", "target"),       # generic
)
SPLITS = ("train", "val", "test")
_SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "valid", "validation"),
                  "test": ("test", "paired")}
_SHOW = 5  # names shown in one-line reports

Sample = tuple[str, np.ndarray, np.ndarray]  # (name, input H×W×3, target H×W×3)


@dataclass
class Pair:
    """One input/target file pair, matched by file stem ``name``."""

    name: str
    input: Path
    target: Path


def _report(items: Sequence[tuple[str, str]]) -> str:
    """'a (reason), b (reason), ... and N more' for one-line messages."""
    shown = ", ".join(f"{name} ({why})" for name, why in items[:_SHOW])
    return shown + (f" and {len(items) - _SHOW} more" if len(items) > _SHOW else "")


def _subfolders(root: Path) -> dict[str, Path]:
    """Sub-folders by lower-cased name (folder names are matched case-insensitively)."""
    return {p.name.lower(): p for p in sorted(root.iterdir()) if p.is_dir()}


def _header_size(path: Path) -> tuple[int, int]:
    """(width, height) as displayed, from the header only (EXIF 5–8 swap the axes)."""
    with Image.open(path) as im:
        width, height = im.size
        if exif_orientation(im) in (5, 6, 7, 8):
            width, height = height, width
    return width, height


# ----------------------------------------------------------------------------- folders

class PairedFolder:
    """Input/target pairs in one folder in one of :data:`LAYOUTS`.

    Args:
        root: the folder holding the two sub-folders.
        strict: raise :class:`DataError` on any unmatched file or size mismatch instead of
            skipping it with a warning.
        layouts: candidate (input, target) folder names in order of preference.

    Attributes:
        root, layout (the actual folder names found), pairs (list[Pair], sorted by name),
        skipped (list of (name, reason) for files left out).
    """

    def __init__(self, root: str | os.PathLike[str], strict: bool = False,
                 layouts: Sequence[tuple[str, str]] = LAYOUTS) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: no such folder; pass a dataset folder")
        found = _subfolders(self.root)
        match = next(((found[a.lower()], found[b.lower()]) for a, b in layouts
                      if a.lower() in found and b.lower() in found), None)
        if match is None:
            wanted = ", ".join(f"{a}/+{b}/" for a, b in layouts)
            seen = ", ".join(p.name + "/" for p in found.values()) or "no sub-folders"
            raise DataError(f"{self.root}: no paired layout found (looked for {wanted}; "
                            f"found {seen}); arrange inputs and targets in one of those")
        input_dir, target_dir = match
        self.layout: tuple[str, str] = (input_dir.name, target_dir.name)
        inputs, targets = list_images(input_dir), list_images(target_dir)
        if not inputs and not targets:
            raise DataError(f"{self.root}: {input_dir.name}/ and {target_dir.name}/ hold no "
                            f"images; add image files to them")
        self.pairs, self.skipped = self._match(inputs, targets)
        if self.skipped:
            if strict:
                raise DataError(f"{self.root}: {len(self.skipped)} unusable file(s): "
                                f"{_report(self.skipped)}; fix or remove them, or run "
                                f"without strict checking to skip them")
            log.warning("%s: skipping %d unusable file(s): %s", self.root,
                        len(self.skipped), _report(self.skipped))
        if not self.pairs:
            raise DataError(f"{self.root}: no usable input/target pairs; pair files by name "
                            f"across {input_dir.name}/ and {target_dir.name}/")

    def _match(self, inputs: list[Path], targets: list[Path]
               ) -> tuple[list[Pair], list[tuple[str, str]]]:
        skipped: list[tuple[str, str]] = []
        by_stem: list[dict[str, Path]] = []
        for files, side in ((inputs, self.layout[0]), (targets, self.layout[1])):
            stems: dict[str, Path] = {}
            for path in files:
                if path.stem in stems:  # a.jpg and a.png in one folder: which one is meant?
                    skipped.append((f"{side}/{path.name}", "duplicate name"))
                else:
                    stems[path.stem] = path
            by_stem.append(stems)
        ins, tgts = by_stem
        skipped += [(ins[s].name, f"no file in {self.layout[1]}/")
                    for s in sorted(set(ins) - set(tgts))]
        skipped += [(tgts[s].name, f"no file in {self.layout[0]}/")
                    for s in sorted(set(tgts) - set(ins))]
        pairs = []
        for stem in sorted(set(ins) & set(tgts)):
            try:
                size_in, size_tgt = _header_size(ins[stem]), _header_size(tgts[stem])
            except (OSError, SyntaxError, ValueError) as err:
                skipped.append((stem, f"unreadable: {' '.join(str(err).split())}"))
                continue
            if size_in != size_tgt:
                skipped.append((stem, f"size {size_in[0]}x{size_in[1]} vs "
                                      f"{size_tgt[0]}x{size_tgt[1]}"))
                continue
            pairs.append(Pair(stem, ins[stem], tgts[stem]))
        return pairs, skipped


class UnpairedFolder:
    """All images directly in ``root`` (no targets), for no-reference evaluation.

    Attributes: root, images (list[Path], sorted).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: no such folder; pass a folder of images")
        self.images = list_images(self.root)
        if not self.images:
            raise DataError(f"{self.root}: no images found; add .png/.jpg/... files")


# -------------------------------------------------------------------------- PairSource

class PairSource:
    """A list-like of paired samples with lazy, cached loading.

    ``load(i)`` returns ``(name, input, target)``, both H×W×3 float32 in [0, 1] with equal
    shapes. Loaded samples are kept in an LRU cache bounded by ``cache_mb``.

    ``degrade`` is set for synthetic sources (the embedded train split): their target is a
    clean image and their input is ``degrade(target, rng)``, drawn anew by whoever samples
    (``TrainSampler`` passes its per-step rng; ``load`` uses a per-index default).

    Attributes:
        names: sample names, in index order.
        skipped: (name, reason) for every sample left out (unmatched, size, corrupt).
    """

    def __init__(self, names: Sequence[str], loader: Callable[[int], tuple[np.ndarray, np.ndarray]],
                 *, description: str, skipped: Sequence[tuple[str, str]] = (),
                 cache_mb: float = 512.0, degrade: Callable | None = None) -> None:
        self.names = list(names)
        self.skipped = list(skipped)
        self.description = description
        self.degrade = degrade
        self._loader = loader
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._cache_bytes, self._cache_limit = 0, int(cache_mb * 2**20)

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"PairSource({self.description}, {len(self)} samples, {len(self.skipped)} skipped)"

    def __getitem__(self, i: int) -> Sample:
        return self.load(i)

    def __iter__(self) -> Iterator[Sample]:
        return (self.load(i) for i in range(len(self)))

    def arrays(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The cached stored pair (for synthetic sources: clean target twice)."""
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range for {len(self)} samples")
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        pair = self._loader(i)
        size = pair[0].nbytes + pair[1].nbytes
        if size <= self._cache_limit:
            self._cache[i] = pair
            self._cache_bytes += size
            while self._cache_bytes > self._cache_limit:
                _, old = self._cache.popitem(last=False)
                self._cache_bytes -= old[0].nbytes + old[1].nbytes
        return pair

    def load(self, i: int, rng: np.random.Generator | None = None) -> Sample:
        """Sample ``i`` as (name, input H×W×3, target H×W×3)."""
        inp, tgt = self.arrays(i)
        if self.degrade is not None:
            # Fixed per-index default keeps ``load`` reproducible; samplers pass fresh rngs.
            rng = rng if rng is not None else np.random.default_rng([zlib.crc32(b"load"), i])
            inp = self.degrade(tgt, rng)
        return self.names[i], inp, tgt

    @classmethod
    def from_pairs(cls, pairs: Sequence[Pair], *, description: str,
                   skipped: Sequence[tuple[str, str]] = (), strict: bool = False,
                   cache_mb: float = 512.0) -> PairSource:
        """A source over files, after decoding every file once.

        Corrupt pairs are skipped with one warning and listed in ``skipped``
        (``strict=True``: :class:`DataError` naming them instead).

        Verifying up front (in threads; decoding releases the GIL) means a corrupt or
        truncated file is reported and excluded before training starts, so the index space
        never changes mid-run and sampling stays a pure function of (seed, step).
        """
        def check(pair: Pair) -> str | None:
            try:
                for path in (pair.input, pair.target):
                    with Image.open(path) as im:
                        im.load()
            except Exception as err:  # any decoder failure means "unusable file"
                return " ".join(str(err).split()) or type(err).__name__
            return None

        workers = max(1, min(8, os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            problems = list(pool.map(check, pairs))
        bad = [(p.name, f"corrupt: {why}") for p, why in zip(pairs, problems) if why]
        if bad and strict:
            raise DataError(f"{description}: {len(bad)} corrupt image pair(s): {_report(bad)}; "
                            f"replace or remove them, or run without strict checking")
        if bad:
            log.warning("%s: skipping %d corrupt image pair(s): %s", description, len(bad),
                        _report(bad))
        good = [p for p, why in zip(pairs, problems) if not why]
        if not good:
            raise DataError(f"{description}: every image pair is unreadable; check the files")

        def loader(i: int) -> tuple[np.ndarray, np.ndarray]:
            inp, tgt = load_image(good[i].input), load_image(good[i].target)
            if inp.shape != tgt.shape:  # headers agreed, but e.g. orientation did not
                raise ImageLoadError(f"{good[i].input}: shape {inp.shape} differs from target "
                                     f"{tgt.shape}; fix the pair")
            return inp, tgt

        return cls([p.name for p in good], loader, description=description,
                   skipped=list(skipped) + bad, cache_mb=cache_mb)

    @classmethod
    def from_arrays(cls, samples: Sequence[Sample], *, description: str,
                    degrade: Callable | None = None) -> PairSource:
        """A source over in-memory (name, input, target) samples."""
        items = list(samples)
        return cls([s[0] for s in items], lambda i: (items[i][1], items[i][2]),
                   description=description, cache_mb=0.0, degrade=degrade)


# ---------------------------------------------------------------------------- opening

def open_dataset(spec: str | os.PathLike[str], task: str | Task, split: str, *,
                 strict: bool = False, seed: int = 0, val_fraction: float = 0.1) -> PairSource:
    """Open a split of a dataset as a :class:`PairSource`.

    Args:
        spec: ``"embedded"`` or a folder: either with split sub-folders
            (train/, val/, test/; paired/ = test) or itself a paired layout (any split).
        task: task name or Task; its typical layouts are tried first.
        split: "train", "val" or "test".
        strict: unmatched / size-mismatched files raise instead of being skipped.
        seed, val_fraction: when no val/ folder exists, val = the first
            max(1, round(val_fraction·n)) names of a seeded permutation of the sorted train
            names, and train excludes them.
    """
    task = get_task(task)
    if split not in SPLITS:
        raise ConfigError(f"unknown split '{split}'; choose one of: {', '.join(SPLITS)}")
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    if str(spec) == "embedded":
        return embedded(task.name, split)
    root = Path(spec)
    if not root.is_dir():
        raise DataError(f"{root}: no such dataset folder; pass a folder or 'embedded'")
    layouts = tuple(task.layouts) + tuple(l for l in LAYOUTS if l not in task.layouts)
    found = _subfolders(root)
    split_dirs = {s: next((found[n] for n in names if n in found), None)
                  for s, names in _SPLIT_FOLDERS.items()}

    if any(split_dirs.values()):
        folder_for = split_dirs[split] or (split_dirs["train"] if split == "val" else None)
        if folder_for is None:
            raise DataError(f"{root}: no {'/ or '.join(_SPLIT_FOLDERS[split])}/ sub-folder "
                            f"for the {split} split; add one")
        folder = PairedFolder(folder_for, strict=strict, layouts=layouts)
        carve = split_dirs["val"] is None and split in ("train", "val")
    else:
        folder = PairedFolder(root, strict=strict, layouts=layouts)
        carve = split in ("train", "val")

    pairs = folder.pairs
    if carve:
        val_names = carve_val(sorted(p.name for p in pairs), seed, val_fraction)
        pairs = [p for p in pairs if (p.name in val_names) == (split == "val")]
        if not pairs:
            raise DataError(f"{folder.root}: too few pairs ({len(folder.pairs)}) to carve a "
                            f"validation split; add a val/ folder or more pairs")
    return PairSource.from_pairs(pairs, description=f"{folder.root} [{split}]",
                                 skipped=folder.skipped, strict=strict)


def has_test_split(spec: str | os.PathLike[str]) -> bool:
    """Whether ``spec`` holds a test split of its own (embedded data, or a test/ or paired/ folder).

    A folder that is itself one paired layout has none: its "test" split would be the very
    images a model trained on it has seen.
    """
    if str(spec) == "embedded":
        return True
    root = Path(spec)
    return root.is_dir() and any(n in _subfolders(root) for n in _SPLIT_FOLDERS["test"])


def carve_val(names: Sequence[str], seed: int, val_fraction: float) -> set[str]:
    """The validation names: a seeded permutation of the sorted names, first k of them.

    k = max(1, round(val_fraction · n)). Depends only on (names, seed, val_fraction).
    """
    ordered = sorted(names)
    k = max(1, round(val_fraction * len(ordered)))
    perm = np.random.default_rng(seed).permutation(len(ordered))
    return {ordered[j] for j in perm[:k]}


# ---------------------------------------------------------------------- embedded data

# (name, file, guard px at ≤512 scale): guard shortens the train and val regions of the
# right stereo view by the maximum disparity (60 px at 741 px width -> 42 px at 512).
_EMBEDDED_PHOTOS = (("astronaut", "astronaut.png", 0), ("chelsea", "chelsea.png", 0),
                    ("coffee", "coffee.png", 0), ("rocket", "rocket.jpg", 0),
                    ("motorcycle_left", "motorcycle_left.png", 0),
                    ("motorcycle_right", "motorcycle_right.png", 42))
_SPLIT_EDGES = (0.6, 0.8)        # train | val | test column fractions
_EVAL_HEIGHT = 256               # val/test regions are centre-cropped to this height
_DEGRADATIONS_PER_REGION = 2


@functools.lru_cache(maxsize=1)
def _embedded_regions() -> dict[str, tuple[tuple[str, np.ndarray], ...]]:
    """Clean uint8 regions per split: {"train": ((name, H×W×3), ...), "val": ..., ...}."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the embedded dataset needs scikit-image; install it (pip install scikit-image)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    regions: dict[str, list[tuple[str, np.ndarray]]] = {s: [] for s in SPLITS}
    for name, filename, guard in _EMBEDDED_PHOTOS:
        path = folder / filename
        if not path.is_file():
            raise DataError(f"{path}: embedded dataset photo missing; reinstall scikit-image")
        with Image.open(path) as im:
            im = im.convert("RGB")
            scale = min(1.0, 512 / max(im.size))
            if scale < 1.0:  # Pillow's integer resampling is deterministic across machines
                im = im.resize((round(im.width * scale), round(im.height * scale)),
                               Image.Resampling.LANCZOS)
            photo = np.asarray(im)
        h, w = photo.shape[:2]
        a, b = (round(f * w) for f in _SPLIT_EDGES)
        top = max(0, (h - _EVAL_HEIGHT) // 2)
        regions["train"].append((name, photo[:, : a - guard]))
        regions["val"].append((name, photo[top:top + _EVAL_HEIGHT, a: b - guard]))
        regions["test"].append((name, photo[top:top + _EVAL_HEIGHT, b:]))
    return {s: tuple(r) for s, r in regions.items()}


def _quantise(image: np.ndarray) -> np.ndarray:
    # 8-bit levels make the fixed splits bit-identical across CPUs, whose float
    # transcendental functions may differ in the last ulp.
    return (np.round(np.clip(image, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


@functools.lru_cache(maxsize=16)
def _embedded_source(task_name: str, split: str) -> PairSource:
    task = get_task(task_name)
    regions = _embedded_regions()[split]
    if split == "train":
        samples = [(name, clean, clean) for name, clean in
                   ((n, r.astype(np.float32) / 255.0) for n, r in regions)]
        return PairSource.from_arrays(samples, description=f"embedded {task.name} [train]",
                                      degrade=task.degrade)
    # crc32, not hash(): Python salts str hashes per process.
    rng = np.random.default_rng([zlib.crc32(task.name.encode()), SPLITS.index(split)])
    samples = []
    for name, region in regions:
        clean = region.astype(np.float32) / 255.0
        for k in range(_DEGRADATIONS_PER_REGION):
            samples.append((f"{name}_{k}", _quantise(task.degrade(clean, rng)), clean))
    return PairSource.from_arrays(samples, description=f"embedded {task.name} [{split}]")


def embedded(task: str | Task, split: str) -> PairSource:
    """The embedded default dataset (see module docstring): 6 train regions (synthetic,
    degraded on the fly), 12 fixed val and 12 fixed test pairs per task."""
    if split not in SPLITS:
        raise ConfigError(f"unknown split '{split}'; choose one of: {', '.join(SPLITS)}")
    return _embedded_source(get_task(task).name, split)


# ---------------------------------------------------------------------------- sampling

class TrainSampler:
    """Random training crops; ``batch(step)`` is a pure function of (seed, step).

    Each step uses ``np.random.default_rng([seed, step])``, so resuming at step k reproduces
    the exact batches of an uninterrupted run. Per sample, in this draw order: index,
    crop window, (synthetic sources) degradation of the clean crop, then augmentation.

    Images smaller than ``crop`` are reflect-padded (the same padding for input and target)
    rather than shrinking the crop, so every batch has a fixed N×3×crop×crop shape.
    Augmentation (``augment=True``): horizontal flip, vertical flip, rotation by k·90°,
    applied identically to input and target (the 8 symmetries of the square).

    **Synthetic mix** (``synthetic_mix`` p > 0, paired sources only): with probability p a
    sample's input is not the real degraded crop but the task's formation model applied to
    the real target crop (``task.degrade``: new maps drawn per sample). A small real set
    holds few water types, hazes or exposures; the physics model spans more of them with the
    same clean content. The coin is drawn only when p > 0, so p = 0 draws exactly what a run
    without the option draws.

    **Data parallelism.** With ``world_size`` N > 1 the step's *global* batch is the
    N·``batch_size`` samples one process with that batch size would draw from (seed, step),
    in the same order; rank r returns samples [r·B, (r+1)·B) of it (B = ``batch_size``,
    drawing stops after its slice). So the ranks' batches concatenate to the single-process
    batch of N·B, the position in the data is the step alone (nothing per rank to save), and a
    run resumed with another N continues from the same step (with the new global batch).

    Args:
        source: a PairSource, or "embedded" for the embedded train split of ``task``.
        task: task name or Task (used for "embedded").
        rank, world_size: this process's share of the global batch (see above).
    """

    def __init__(self, source: PairSource | str, task: str | Task, crop: int = 128,
                 batch_size: int = 4, seed: int = 0, augment: bool = True, *,
                 synthetic_mix: float = 0.0, rank: int = 0, world_size: int = 1) -> None:
        self.task = get_task(task)
        self.source = embedded(self.task, "train") if isinstance(source, str) else source
        if len(self.source) == 0:
            raise DataError(f"{self.source.description}: no samples to train on")
        if crop < 1 or batch_size < 1:
            raise ConfigError(f"crop and batch size must be positive, got {crop}, {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of {world_size} processes")
        if not 0.0 <= synthetic_mix <= 1.0:
            raise ConfigError(f"--synthetic-mix is a probability in [0, 1], got {synthetic_mix}")
        self.crop, self.batch_size, self.seed, self.augment = crop, batch_size, seed, augment
        self.synthetic_mix = float(synthetic_mix)
        self.rank, self.world_size = rank, world_size

    def sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One (input, target) crop pair, crop×crop×3 float32 each."""
        i = int(rng.integers(len(self.source)))
        inp, tgt = self.source.arrays(i)
        h, w = tgt.shape[:2]
        c = self.crop
        y0 = int(rng.integers(max(1, h - c + 1)))
        x0 = int(rng.integers(max(1, w - c + 1)))
        window = (slice(y0, y0 + c), slice(x0, x0 + c))
        tgt = _pad_to(tgt[window], c)
        if self.source.degrade is not None:
            inp = self.source.degrade(tgt, rng)
        elif self.synthetic_mix > 0.0 and rng.random() < self.synthetic_mix:
            inp = self.task.degrade(tgt, rng)
        else:
            inp = _pad_to(inp[window], c)
        if self.augment:
            flip_h, flip_v, turns = rng.random() < 0.5, rng.random() < 0.5, int(rng.integers(4))
            inp, tgt = (_symmetry(x, flip_h, flip_v, turns) for x in (inp, tgt))
        return inp, tgt

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), each B×3×crop×crop float32: this rank's slice of step ``step``."""
        rng = np.random.default_rng([self.seed, step])
        first = self.rank * self.batch_size
        drawn = [self.sample(rng) for _ in range(first + self.batch_size)]  # in global order
        pairs = drawn[first:]
        inputs = np.stack([p[0] for p in pairs]).transpose(0, 3, 1, 2)
        targets = np.stack([p[1] for p in pairs]).transpose(0, 3, 1, 2)
        return (torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32)),
                torch.from_numpy(np.ascontiguousarray(targets, dtype=np.float32)))


def _pad_to(image: np.ndarray, size: int) -> np.ndarray:
    """Reflect-pad H×W×3 at the bottom/right up to size×size (no-op when large enough)."""
    ph, pw = max(0, size - image.shape[0]), max(0, size - image.shape[1])
    if ph == 0 and pw == 0:
        return image
    mode = "reflect" if min(image.shape[:2]) > 1 else "edge"  # reflect needs 2+ pixels
    return np.pad(image, ((0, ph), (0, pw), (0, 0)), mode=mode)


def _symmetry(image: np.ndarray, flip_h: bool, flip_v: bool, turns: int) -> np.ndarray:
    if flip_h:
        image = image[:, ::-1]
    if flip_v:
        image = image[::-1]
    return np.ascontiguousarray(np.rot90(image, k=turns))


def val_batches(source: PairSource, crop: int | None = None
                ) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    """Yield (name, input 1×3×H×W, target 1×3×H×W) per sample, in index order.

    Full images, or centre crops of side ``crop`` (clipped to the image size) when given.
    """
    for i in range(len(source)):
        name, inp, tgt = source.load(i)
        if crop is not None:
            h, w = tgt.shape[:2]
            ch, cw = min(crop, h), min(crop, w)
            y0, x0 = (h - ch) // 2, (w - cw) // 2
            inp, tgt = inp[y0:y0 + ch, x0:x0 + cw], tgt[y0:y0 + ch, x0:x0 + cw]
        yield name, _to_batch(inp), _to_batch(tgt)


def _to_batch(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))[None]
