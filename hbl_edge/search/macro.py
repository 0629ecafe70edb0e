"""Macro search of the edge network (DESIGN §2, §10): scale, widths, HNU count, refinement.

Mechanism: a small outer sweep, the op search inside.

- The macro choices change the *shape* of the supernet (widths, unit count) or the resolution
  its inner network sees (s), so they cannot share one supernet's weights as op choices do;
  mixing them would mean a supernet per combination anyway. The grid is small (by default
  s ∈ {2, 4, 8} × widths {8/16, 16/32} × units {1, 3} × refinement off / boxmix_3x3 /
  boxmix_5x5), so an outer sweep is affordable and its every point is measured, not estimated.
- The latency model prunes first: a candidate whose fastest network (the model's cheapest op
  on every edge, refinement off) is over the budget is dropped without training.
- Each remaining candidate gets a short stage A (``macro_steps`` bilevel steps of the
  :class:`EdgeSupernet` with λ* and the latency term); its derived network, repaired to the
  budget by the model when over, then trains ``macro_train_steps`` steps as stage T does, once
  per seed (``macro_proxy_seeds``, each seed its own validation carve-out), and is scored by its
  mean validation PSNR on whole frames (``driver._proxy_train``): the highest wins. (With
  ``macro_train_steps = 0`` the lowest λ* loss of the short search wins, but those losses lie
  within 0.1–0.3 % of each other: a choice by noise, docs/search.md.) The full stage A then
  searches the winner's ops (and the repair keeps the promise, :mod:`hbl_edge.search.repair`).

The sweep is written to ``RUN/search/macro.json`` so a resumed run does not repeat it.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ..edge_network import MapHead, Refinement, pad_low, retinex_inverse, scattering_inverse
from ..errors import ConfigError
from ..genotype import Genotype, Macro
from ..upsample import box_downscale, make_upsampler
from .supernet import DerivationReport, Supernet, derive

log = logging.getLogger(__name__)

MACRO_MODES = ("edge",)
DEFAULT_SCALES = (2, 4, 8)
DEFAULT_WIDTHS = ((8, 16), (16, 32))
DEFAULT_UNITS = (1, 3)
#: Refinement off, one boxmix_3x3 (a 3×3 "centre + local mean" filter mixed across channels, one
#: MatMul) or one boxmix_5x5 (centre, 3×3 and 5×5 means). boxmix_3x3 scored 18.22 / .692 on LOL
#: where one conv_3x3 scored 17.49 / .686 (s8 16/32×1, 2000 steps, 1 seed each) at under half
#: its full-resolution cost. boxmix_5x5 costs +0.6 ms over it at s = 4, 600×400 (bench/results/
#: refine_ops_s4.json), and raised the SSIM of every 300-step proxy in the sweep at Zero-DCE++'s
#: 5.8 ms by .02–.08 over boxmix_3x3 at the same macro; that search chose it, 18.39 ± 0.11 / .708
#: over 3 seeds (bench/results/search_lowlight_zerodce_b5.json). Both stay in the grid so the
#: budget decides; docs/benchmarks.md.
DEFAULT_REFINE = ((), ("boxmix_3x3",), ("boxmix_5x5",))
#: Map channels per task (L: 1 for low light; t: 1 for haze, per channel for underwater).
MAP_CHANNELS = {"lowlight": 1, "dehaze": 1, "underwater": 3}


# ---------------------------------------------------------------------------------------------
# The supernet of an edge network
# ---------------------------------------------------------------------------------------------
class EdgeSupernet(Supernet):
    """:class:`Supernet` as the inner HNU network of an edge network (``macro`` fixed).

    Input N×3×H×W; the mixed ops run on the box-downscaled image; output as
    :class:`hbl_edge.edge_network.EdgeNetwork` (map head, guided upsampling, inverse model at
    full resolution, optional refinement). α and the op derivation are the inner supernet's.
    """

    def __init__(self, macro: Macro, space: str = "edge", channels: Sequence[int] = (8, 16), units: int = 2,
                 **kw: Any) -> None:
        object.__setattr__(self, "_maps_out", macro.out_channels)  # read by _build, before Module init
        super().__init__(space, channels, units, **kw)
        self.macro = macro
        self.map_head = MapHead(macro)
        self.upsampler = make_upsampler(macro.upsample, macro.scale, macro.radius, macro.eps)
        self.refine = Refinement(macro.refine, macro.refine_channels) if macro.refine else None

    @property
    def out_channels(self) -> int:  # type: ignore[override]
        return self.__dict__["_maps_out"]

    def _maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        low = box_downscale(x, self.macro.scale)
        z = super().forward(pad_low(low))[:, :, : low.shape[2], : low.shape[3]]
        p_low, airlight = self.map_head(z)
        return self.upsampler(p_low, x, low), airlight, z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, airlight, _ = self._maps(x)
        m = self.macro
        out = retinex_inverse(x, p, m.floor) if m.model == "retinex" else scattering_inverse(x, p, airlight, m.floor)
        return self.refine(out) if self.refine is not None else out

    @torch.no_grad()
    def init_from_data(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        """The map head's data-dependent start (:func:`hbl_edge.edge_network.map_head_start`)."""
        from ..edge_network import map_head_start

        z = Supernet.forward(self, pad_low(box_downscale(inputs, self.macro.scale)))
        bias, _ = map_head_start(self.macro, z, inputs, targets)
        self.map_head.bias.copy_(bias)


def derive_edge(net: EdgeSupernet, max_parameter_free_per_unit: int | None = None) -> tuple[Genotype, DerivationReport]:
    """The argmax edge genotype (hbl-genotype/2) of an :class:`EdgeSupernet`."""
    g, report = derive(net, max_parameter_free_per_unit)
    return dataclasses.replace(g, macro=net.macro, format=None), report


# ---------------------------------------------------------------------------------------------
# Candidates
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    scale: int
    channels: tuple[int, int]
    units: int
    refine: tuple[str, ...] = ()

    def macro(self, task: str) -> Macro:
        from ..tasks import get_task

        t = get_task(task)
        return Macro(scale=self.scale, model=t.inverse, map_channels=MAP_CHANNELS.get(t.name, 1), upsample="guided",
                     floor=0.01 if t.inverse == "retinex" else 0.05, refine=self.refine)

    @property
    def name(self) -> str:
        r = "+".join(self.refine) if self.refine else "none"
        return f"s{self.scale} {self.channels[0]}/{self.channels[1]}x{self.units} refine:{r}"

    def to_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "channels": list(self.channels), "units": self.units, "refine": list(self.refine)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Candidate":
        return cls(int(d["scale"]), tuple(d["channels"]), int(d["units"]), tuple(d.get("refine", ())))


def grid(scales: Sequence[int] = DEFAULT_SCALES, widths: Sequence[Sequence[int]] = DEFAULT_WIDTHS,
         units: Sequence[int] = DEFAULT_UNITS, refine: Sequence[Sequence[str]] = DEFAULT_REFINE) -> list[Candidate]:
    """Every combination of the macro choices, in a fixed order."""
    from ..genotype import MACRO_SCALES

    for s in scales:
        if s not in MACRO_SCALES:
            raise ConfigError(f"--macro-scales takes values of {', '.join(map(str, MACRO_SCALES))}, got {s}")
    return [Candidate(int(s), (int(w[0]), int(w[1])), int(u), tuple(r))
            for s in scales for w in widths for u in units for r in refine]


def parse_widths(text: str) -> tuple[tuple[int, int], ...]:
    """``"8/16,16/32"`` → ((8, 16), (16, 32))."""
    try:
        out = tuple(tuple(int(v) for v in part.split("/")) for part in text.split(",") if part.strip())
    except ValueError:
        out = ()
    if not out or any(len(w) != 2 or min(w) < 1 for w in out):
        raise ConfigError(f"--macro-widths takes C1/C2 pairs separated by commas, e.g. 8/16,16/32; got {text!r}")
    return out  # type: ignore[return-value]


def parse_refine(text: str) -> tuple[tuple[str, ...], ...]:
    """``"none,boxmix_3x3"`` → ((), ("boxmix_3x3",)); ops of one branch joined by ``+``."""
    from ..genotype import REFINE_OPS

    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        ops = () if part == "none" else tuple(part.split("+"))
        bad = [o for o in ops if o not in REFINE_OPS]
        if bad:
            raise ConfigError(f"--macro-refine: {bad[0]!r} is no refinement op; use none or {', '.join(REFINE_OPS)}")
        out.append(ops)
    if not out:
        raise ConfigError("--macro-refine takes e.g. none,boxmix_3x3")
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# Latency models of the candidates (profiled once per inner shape, cached in the run)
# ---------------------------------------------------------------------------------------------
def edge_models(
    cands: Sequence[Candidate], task: str, space: str, resolution: Sequence[int], cache: Path, *,
    device: str = "cpu", backend: str = "onnxruntime", threads: int | None = None, spinning: bool | None = None,
    quick: bool = False,
) -> dict[Candidate, Any]:
    """An :class:`~hbl_edge.search.edge_latency.EdgeLatencyModel` per candidate.

    Inner tables: one per (s, widths), profiled at the low resolution on this machine (units =
    the largest of the grid, for the calibration networks) and cached as
    ``cache/inner_s{s}_{c1}x{c2}.json``; full-resolution parts: every macro of the grid plus its
    refinement-off twin, measured together, cached as ``cache/parts.json``.
    """
    from ..runio import read_json, write_json
    from .edge_latency import EdgeLatencyModel, calibrate_edge, low_resolution, macro_key, measure_parts
    from .latency import LatencyModel, LatencyTable

    if device not in ("cpu", "cuda"):
        raise ConfigError("--macro edge profiles its tables on this machine: use --device cpu or cuda here "
                          "(a macro search for a Jetson runs on the Jetson)")
    if backend != "onnxruntime":
        raise ConfigError("--macro edge measures the full-resolution parts with onnxruntime: use --backend onnxruntime")
    cache.mkdir(parents=True, exist_ok=True)
    units = max(c.units for c in cands)
    tables: dict[tuple[int, tuple[int, int]], LatencyModel] = {}
    for key in sorted({(c.scale, c.channels) for c in cands}):
        s, ch = key
        path = cache / f"inner_s{s}_{ch[0]}x{ch[1]}.json"
        if path.exists():
            tables[key] = LatencyModel(LatencyTable.load(path))
            continue
        from .profiler import profile

        low = low_resolution(resolution, s)
        log.info("macro search: profiling the inner network at %dx%d, widths %s", *low, ch)
        table = profile(device, backend, low, space, ch, out=path, units=units, repeats=8 if quick else 15,
                        threads=threads, allow_spinning=spinning, calibrate=6 if quick else 12)
        tables[key] = LatencyModel(table)
    macros: list[Macro] = []
    for c in cands:
        m = c.macro(task)
        macros += [m, dataclasses.replace(m, refine=())]
    parts_path = cache / "parts.json"
    parts = read_json(parts_path, ConfigError, "edge parts") if parts_path.exists() else {}
    missing = [m for m in dict.fromkeys(macros) if macro_key(m) not in parts]
    if missing:
        parts.update(measure_parts(missing, resolution, device=device, threads=threads, allow_spinning=spinning,
                                   repeats=10 if quick else 15))
        write_json(parts_path, parts)
    wholes: dict[tuple[int, tuple[int, int]], dict[str, Any]] = {}
    for key in tables:  # the whole-network correction of each inner table, on edge networks of its candidates
        s, ch = key
        path = cache / f"whole_s{s}_{ch[0]}x{ch[1]}.json"
        if path.exists():
            wholes[key] = read_json(path, ConfigError, "edge whole-network calibration")
            continue
        shapes = [(c.macro(task), c.units) for c in cands if (c.scale, c.channels) == key]
        log.info("macro search: calibrating s%d %d/%d edge networks whole at %dx%d", s, *ch, *resolution)
        wholes[key] = calibrate_edge(tables[key], parts, shapes, resolution, n=6 if quick else 8, device=device,
                                     threads=threads, allow_spinning=spinning, repeats=10 if quick else 15)
        write_json(path, wholes[key])
    return {c: EdgeLatencyModel(tables[(c.scale, c.channels)], parts, c.macro(task), resolution,
                                wholes[(c.scale, c.channels)]) for c in cands}


def floor_genotype(cand: Candidate, task: str, space: str, model) -> Genotype:
    """The candidate's fastest network by the model: cheapest op on every edge, refinement off."""
    from .latency import random_genotype
    from .repair import cheapest

    core = random_genotype(space, cand.channels, cand.units, seed=0)
    g = dataclasses.replace(core, macro=cand.macro(task), format=None)
    return cheapest(g, model.predict, model.fcm, model.hnu)


__all__ = ["Candidate", "EdgeSupernet", "derive_edge", "edge_models", "floor_genotype", "grid", "parse_refine",
           "parse_widths", "MACRO_MODES"]
