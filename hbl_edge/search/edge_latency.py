"""Latency of edge networks (DESIGN §10): the HNU network at 1/s plus the full-resolution parts.

An edge network at W×H with scale s runs

- the inner HNU network on the box-downscaled image, ⌈W/s⌉×⌈H/s⌉ (padded to a multiple of 4
  at that size): priced by a :class:`~hbl_edge.search.latency.LatencyModel` whose table is
  profiled at the low resolution with the network's widths (its calibration absorbs the call
  into the runtime and the low-resolution I/O, as for any paper network);
- the full-resolution parts: the downscale, the guided (or bilinear) upsampling of the maps,
  the inverse model, the clamp and the refinement branch when it is on. These are measured
  whole, as deployed (:mod:`hbl_edge.search.deployed`'s runner and consecutive runs), on a
  *shell* network: the edge network with its HNU network replaced by one 1×1 conv at 1/s.
  What the shell's call and I/O share with the inner network's calibration is taken off by
  timing an empty network (a clamp) at the low resolution the same way:

      LAT_raw(g) = LAT_inner(core of g) + T_shell(macro, W×H) − T_empty(⌈W/s⌉×⌈H/s⌉).

- the whole: the two parts do not add up exactly (the full-resolution tensors the inner network's
  output meets, the padding at 1/s, caches shared across the boundary), and the inner table's own
  calibration was fitted at 1/s on paper-shaped networks only. So, as for paper networks
  (:mod:`hbl_edge.search.calibration`), a whole-network correction is fitted on **edge
  calibration networks** measured whole as deployed (:func:`calibrate_edge`):
  ``LAT = s_inner · LAT_inner + s_part · part + b`` (form offset / ratio / linear, chosen by
  leave-one-out), stored with the model and applied by :meth:`EdgeLatencyModel.predict` and
  :meth:`~EdgeLatencyModel.expected` alike.

:class:`EdgeLatencyModel` has the interface the search and the repair use (``predict``,
``expected``, ``fcm``, ``hnu``, ``label``, ``table``): ``expected(α)`` is the inner model's
differentiable term plus the constant full-resolution part of the macro being searched.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import tempfile
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..genotype import Genotype, GenotypeLike, Macro, load_genotype
from .latency import LatencyModel, LatencyTableError


def low_resolution(resolution: Sequence[int], scale: int) -> tuple[int, int]:
    """(⌈W/s⌉, ⌈H/s⌉): what the inner network sees (box_downscale keeps partial blocks)."""
    w, h = (int(v) for v in resolution)
    return max(math.ceil(w / scale), 4), max(math.ceil(h / scale), 4)


def macro_key(macro: Macro) -> str:
    return json.dumps(macro.to_dict(), sort_keys=True)


def core_genotype(g: Genotype) -> Genotype:
    """The inner HNU network of an edge genotype as a paper-format genotype (what its table prices)."""
    return dataclasses.replace(g, macro=None, format=None)


# ---------------------------------------------------------------------------------------------
# Shell and empty networks (what the full-resolution parts cost)
# ---------------------------------------------------------------------------------------------
def _shell_genotype(macro: Macro) -> Genotype:
    from ..genotype import edge_genotype

    return edge_genotype(scale=macro.scale, model=macro.model, map_channels=macro.map_channels, upsample=macro.upsample,
                         floor=macro.floor, channels=(4, 4), units=1, radius=macro.radius, eps=macro.eps,
                         refine=macro.refine, refine_channels=macro.refine_channels)


class _StubCore(nn.Module):
    """Stands in for the HNU network: one 1×1 conv 3→maps (no BatchNorm, no units)."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, out_channels, 1, bias=False)
        self.units = nn.ModuleList()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def shell_network(macro: Macro):
    """The edge network of ``macro`` with its HNU network replaced by a 1×1 conv (full-res parts only)."""
    from ..edge_network import EdgeNetwork

    net = EdgeNetwork(_shell_genotype(macro))
    net.core = _StubCore(macro.out_channels)
    return net.eval()


def empty_network():
    """A network whose exported graph is the clamp alone (the call and the I/O)."""
    from ..edge_network import EdgeNetwork

    class _Empty(EdgeNetwork):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    net = _Empty(_shell_genotype(Macro(scale=2, model="retinex", map_channels=1, upsample="bilinear", floor=0.01)))
    net.core = _StubCore(1)
    return net.eval()


def measure_parts(
    macros: Sequence[Macro], resolution: Sequence[int], *, device: str = "cpu", threads: int | None = None,
    allow_spinning: bool | None = None, repeats: int = 15, warmup: int = 3, rounds: int = 2,
) -> dict[str, dict[str, float]]:
    """Measured full-resolution part of each macro: ``{macro_key: {"shell_ms", "empty_ms", "ms"}}``.

    Shells at ``resolution`` and empty networks at each macro's low resolution, exported like a
    deployed network and timed with the deployed runner (fresh runner per round, consecutive
    runs, rounds alternately reversed, median).
    """
    import numpy as np

    from ..export.onnx_export import export_onnx
    from .deployed import _consecutive, _ort_opener

    w, h = (int(v) for v in resolution)
    jobs: list[tuple[str, Any, tuple[int, int]]] = []
    lows = sorted({low_resolution((w, h), m.scale) for m in macros})
    for m in macros:
        jobs.append((f"shell:{macro_key(m)}", shell_network(m), (w, h)))
    for lw, lh in lows:
        jobs.append((f"empty:{lw}x{lh}", empty_network(), (lw, lh)))
    rng = np.random.default_rng(0)
    got: dict[str, list[float]] = {k: [] for k, _, _ in jobs}
    with tempfile.TemporaryDirectory(prefix="hbl-edge-parts-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        openers = []
        for i, (key, net, (jw, jh)) in enumerate(jobs):
            torch.manual_seed(i)
            path = export_onnx(net, Path(tmp) / f"g{i}", check=False).onnx_path
            openers.append((key, _ort_opener(path, device, threads, allow_spinning),
                            rng.random((1, 3, jh, jw), dtype=np.float32)))
        for r in range(rounds):
            for key, opener, x in (openers if r % 2 == 0 else openers[::-1]):
                got[key] += _consecutive(opener(), x, warmup, repeats)
    med = {k: float(statistics.median(v)) for k, v in got.items()}
    out = {}
    for m in macros:
        lw, lh = low_resolution((w, h), m.scale)
        shell, empty = med[f"shell:{macro_key(m)}"], med[f"empty:{lw}x{lh}"]
        out[macro_key(m)] = {"shell_ms": shell, "empty_ms": empty, "ms": shell - empty}
    return out


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------
class EdgeLatencyModel:
    """LAT of edge genotypes of one inner shape (scale, widths, space) at one full resolution.

    Args:
        inner: the latency model of the HNU network at the low resolution.
        parts: ``{macro_key: {"ms": full-resolution part in ms, ...}}`` (:func:`measure_parts`),
            for every macro this model may be asked about (e.g. with and without refinement).
        macro: the macro a search runs under (what :meth:`expected` adds).
        resolution: the full (W, H).
    """

    def __init__(self, inner: LatencyModel, parts: dict[str, dict[str, float]], macro: Macro,
                 resolution: Sequence[int], whole: dict[str, Any] | None = None) -> None:
        self.inner, self.parts, self.macro = inner, dict(parts), macro
        self.whole = whole  # the whole-network correction (calibrate_edge), or None: the raw sum
        self.resolution = tuple(int(v) for v in resolution)
        self.fcm, self.hnu = inner.fcm, inner.hnu
        self.table = inner.table
        if macro_key(macro) not in self.parts:
            raise LatencyTableError(f"no measured full-resolution part for {macro.summary()}")

    @property
    def label(self) -> str:
        w, h = self.resolution
        return f"edge network at {w}x{h}: inner {self.inner.label}; full-resolution parts measured as deployed"

    @property
    def estimate(self) -> bool:
        return self.inner.estimate

    def part_ms(self, macro: Macro) -> float:
        key = macro_key(macro)
        if key not in self.parts:
            raise LatencyTableError(f"no measured full-resolution part for {macro.summary()}; measure it (measure_parts)")
        return float(self.parts[key]["ms"])

    def predict(self, genotype: GenotypeLike) -> float:
        g = load_genotype(genotype)
        if g.macro is None:
            raise LatencyTableError("this latency model prices edge genotypes (with a macro section)")
        if g.macro.scale != self.macro.scale:
            raise LatencyTableError(f"genotype has scale {g.macro.scale}, this model's inner table is for {self.macro.scale}")
        return self._combine(self.inner.predict(core_genotype(g)), self.part_ms(g.macro))

    def predict_raw(self, genotype: GenotypeLike) -> float:
        """LAT_inner + full-resolution part, before the whole-network correction."""
        g = load_genotype(genotype)
        return self.inner.predict(core_genotype(g)) + self.part_ms(g.macro)

    def _combine(self, inner: Any, part: float) -> Any:
        if self.whole is None:
            return inner + part
        from .calibration import apply_calibration

        return apply_calibration(self.whole, edge_terms(inner, part))

    def expected(self, alpha: Any) -> torch.Tensor:
        return self._combine(self.inner.expected(alpha), self.part_ms(self.macro))

    __call__ = expected

    def describe(self, genotype: GenotypeLike) -> dict[str, Any]:
        g = load_genotype(genotype)
        inner = self.inner.describe(core_genotype(g))
        part = self.parts[macro_key(g.macro)]
        return {
            "predicted_ms": self.predict(g), "predicted_raw_ms": self.predict_raw(g),
            "whole_network_correction": None if self.whole is None else
            {k: self.whole[k] for k in ("kind", "scales", "offset_ms", "n", "loo")},
            "genotype": g.summary(), "resolution": list(self.resolution),
            "low_resolution": list(self.inner.table.resolution), "inner_ms": inner["predicted_ms"],
            "full_resolution_part_ms": part["ms"], "shell_ms": part.get("shell_ms"), "empty_ms": part.get("empty_ms"),
            "inner": inner, "label": self.label, "estimate": self.estimate,
        }

    # -- io ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"format": "hbl-edge-latency/1", "resolution": list(self.resolution), "macro": self.macro.to_dict(),
                "inner": self.inner.table.to_dict(), "parts": self.parts, "whole": self.whole}

    def save(self, path: str | Path) -> Path:
        from ..runio import write_json

        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "EdgeLatencyModel":
        from ..runio import read_json
        from .latency import LatencyTable

        d = read_json(Path(path), LatencyTableError, "edge latency model")
        if not isinstance(d, dict) or d.get("format") != "hbl-edge-latency/1":
            raise LatencyTableError(f"{path} is not an edge latency model (format hbl-edge-latency/1)")
        return cls(LatencyModel(LatencyTable.from_dict(d["inner"], str(path))), d["parts"],
                   Macro.from_dict(d["macro"]), d["resolution"], d.get("whole"))


def edge_terms(inner: Any, part: float) -> dict[str, Any]:
    """The whole-network model's terms of an edge network: the inner prediction as the one op
    level, the full-resolution part as the fixed part (so forms linear/levels scale only the inner)."""
    return {"full": inner, "half": 0.0, "hnu": 0.0, "fixed": float(part)}


def edge_calibration_genotypes(inner: LatencyModel, shapes: Sequence[tuple[Macro, int]], n: int,
                               seed: int = 20_000) -> list[Genotype]:
    """``n`` edge genotypes spanning the inner table's range, spread over ``shapes`` (macro, units).

    The inner networks are the table's calibration networks (:func:`calibration_genotypes`:
    heavy to light op choices per level), cut to each shape's unit count; shape k of the list
    gets networks k, k + len(shapes), … so every shape is represented.
    """
    from .calibration import calibration_genotypes

    if not shapes:
        raise ValueError("edge_calibration_genotypes needs at least one (macro, units) shape")
    picked = calibration_genotypes(inner, n, seed)
    out = []
    for k, (g, _) in enumerate(picked):
        macro, units = shapes[k % len(shapes)]
        if units > g.units:
            raise LatencyTableError(f"the inner table was profiled for {g.units} units, not {units}")
        out.append(dataclasses.replace(g, hnu=tuple(tuple(h) for h in g.hnu[:units]), units=units, macro=macro, format=None))
    return out


def calibrate_edge(
    inner: LatencyModel, parts: dict[str, dict[str, float]], shapes: Sequence[tuple[Macro, int]],
    resolution: Sequence[int], *, n: int = 8, device: str = "cpu", threads: int | None = None,
    allow_spinning: bool | None = None, repeats: int = 15, warmup: int = 3, rounds: int = 2, seed: int = 20_000,
) -> dict[str, Any]:
    """Fit the whole-network correction of edge networks of one inner table (module docstring).

    ``n`` edge calibration networks over ``shapes`` are measured whole at ``resolution`` as
    deployed (:func:`hbl_edge.search.deployed.measure_networks`) and
    ``measured ≈ s_inner · LAT_inner + s_part · part + b`` is fitted (forms offset, ratio and
    linear; the one with the best leave-one-out error, :func:`fit_network_model`). Returns the
    fit with one row per network and the machine load around the measurement.
    """
    from .calibration import fit_network_model
    from .deployed import measure_networks
    from .timing import load_snapshot

    genotypes = edge_calibration_genotypes(inner, shapes, n, seed)
    before = load_snapshot()
    measured = measure_networks(genotypes, "onnxruntime", resolution, repeats=repeats, warmup=warmup, rounds=rounds,
                                threads=threads, allow_spinning=allow_spinning, device=device)
    after = load_snapshot()
    terms = [edge_terms(inner.predict(core_genotype(g)), parts[macro_key(g.macro)]["ms"]) for g in genotypes]
    fit = fit_network_model(terms, measured, forms=("offset", "ratio", "linear"))
    rows = [{"genotype": g.summary(), "inner_ms": t["full"], "part_ms": t["fixed"], "predicted_raw_ms": t["full"] + t["fixed"],
             "measured_ms": m} for g, t, m in zip(genotypes, terms, measured)]
    fit.update(rows=rows, seed=seed, resolution=[int(v) for v in resolution], load={"before": before, "after": after},
               fit="measured ≈ s_full · LAT_inner + s_fixed · part + offset_ms (relative least squares, form by leave-one-out)")
    return fit


def is_edge_model_file(path: str | Path) -> bool:
    try:
        return json.loads(Path(path).read_text()).get("format") == "hbl-edge-latency/1"
    except (OSError, ValueError, AttributeError):
        return False


__all__ = ["EdgeLatencyModel", "calibrate_edge", "core_genotype", "edge_calibration_genotypes", "empty_network",
           "is_edge_model_file", "low_resolution",
           "macro_key", "measure_parts", "shell_network"]


def profile_edge(
    genotype: GenotypeLike, resolution: Sequence[int], *, device: str = "cpu", backend: str = "onnxruntime",
    threads: int | None = None, allow_spinning: bool | None = None, repeats: int = 15, calibrate: int = 12,
    out: str | Path | None = None, progress: Any = None,
) -> EdgeLatencyModel:
    """The edge latency model for a genotype's shape: its inner table profiled at 1/s (with
    calibration) and its full-resolution parts (and the refinement-off twin) measured."""
    from ..errors import ConfigError
    from .profiler import profile

    g = load_genotype(genotype)
    if g.macro is None:
        raise ConfigError("--edge takes an edge genotype (hbl-genotype/2, with a macro section)")
    if backend != "onnxruntime":
        raise ConfigError("the edge parts are measured with onnxruntime: use --backend onnxruntime")
    low = low_resolution(resolution, g.macro.scale)
    table = profile(device, backend, low, g.space, g.channels, units=g.units, repeats=repeats, threads=threads,
                    allow_spinning=allow_spinning, calibrate=calibrate, progress=progress)
    macros = list(dict.fromkeys([g.macro, dataclasses.replace(g.macro, refine=())]))
    parts = measure_parts(macros, resolution, device=device, threads=threads, allow_spinning=allow_spinning,
                          repeats=repeats)
    inner = LatencyModel(table)
    whole = None
    if calibrate:
        whole = calibrate_edge(inner, parts, [(m, g.units) for m in macros], resolution, n=max(calibrate // 2, 4),
                               device=device, threads=threads, allow_spinning=allow_spinning, repeats=repeats)
    model = EdgeLatencyModel(inner, parts, g.macro, resolution, whole)
    if out is not None:
        model.save(out)
    return model


__all__ += ["profile_edge"]
