"""The latency-aware term of the architecture search (DESIGN §6).

A latency table (format ``hbl-latency/1``, written by :func:`hbl_edge.search.profiler.profile`
or :func:`~hbl_edge.search.roofline.estimate_table`) holds the time of every op of a space at
every distinct position of the network (c_in, c_out, feature size), measured in context (see
:mod:`hbl_edge.search.op_graphs`), plus the network's fixed parts. :class:`LatencyModel` turns
it into the whole-network model

    LAT(α) = Σ_levels s_l · Σ_{edges e at level l} Σ_o softmax(α_e)_o · t(o, e) + s_fixed · fixed + b

with levels ``full`` (encoder/decoder edges at H×W, head and tail included), ``half`` (at
H/2×W/2) and ``hnu`` (the HNU edges at H/4×W/4). ``s_l, s_fixed, b`` come from the table's
calibration, fitted on whole networks measured as deployed
(:mod:`hbl_edge.search.calibration`): ``b`` is the per-network cost the parts do not show
(the call into the runtime, thread start-up, what the graph shares), ``s_l`` what the
network does differently from the parts at each feature size (fusion across op borders,
cache reuse between ops). Without a calibration every s = 1 and b = 0. LAT is linear in
softmax(α), so it is differentiable in α, and with one-hot α it is exactly
:meth:`LatencyModel.predict` of the genotype: the search term and the calibrated prediction are
the same function.

Positions (DESIGN §2), with H, W the input padded to a multiple of 4:

=========================  ==========  ===========  ==================  ==========  =====
edges                      c_in→c_out  size         ops                 variant     level
=========================  ==========  ===========  ==================  ==========  =====
encoder[0] (head)          3→C1        H×W          fcm                 plain       full
encoder[1..4], decoder[4..7] C1→C1     H×W          fcm                 plain       full
encoder[5..8], decoder[0..3] C2→C2     H/2×W/2      fcm                 plain       half
decoder[8] (tail)          C1→3        H×W          fcm                 plain       full
hnu[u][0..7]               C2→C2       H/4×W/4      hnu                 bn_folded   hnu
=========================  ==========  ===========  ==================  ==========  =====

HNU ops are measured BatchNorm-folded, as the deployed (exported) network runs them.
Objectives: :func:`additive` (L + μ·LAT/T) and :func:`multiplicative` (L·(LAT/T)^β, the
ProxylessNAS / FBNet form), T the budget in ms at the table's resolution.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..errors import ConfigError, HblError
from ..genotype import DECODER_EDGES, ENCODER_EDGES, HNU_EDGES, Genotype, GenotypeLike, load_genotype
from ..ops import get_space, make_op

FORMAT = "hbl-latency/1"
VARIANTS = ("plain", "bn_folded")
#: Feature-size levels of the whole-network model (see the module docstring), then the fixed part.
LEVELS = ("full", "half", "hnu")
CALIBRATION_TERMS = LEVELS + ("fixed",)
ESTIMATE_LABEL = "ESTIMATE (roofline from published specs, not measured)"


class LatencyTableError(ConfigError):
    """A latency table file is malformed, of another format, or does not fit the run."""


# ---------------------------------------------------------------------------------------------
# Positions
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Position:
    """One searched edge: where it is and what an op there maps."""

    group: str  # "encoder", "decoder" or "hnu"
    index: int  # edge index inside the group (per unit for "hnu")
    c_in: int
    c_out: int
    height: int
    width: int
    variant: str  # "plain" or "bn_folded"

    @property
    def key(self) -> tuple[int, int, int, int, str]:
        return (self.c_in, self.c_out, self.height, self.width, self.variant)


def padded_size(resolution: Sequence[int]) -> tuple[int, int]:
    """(W, H) padded up to a multiple of 4, as the network pads its input."""
    w, h = (int(v) for v in resolution)
    return w + (-w) % 4, h + (-h) % 4


def parse_channels(channels: Sequence[int]) -> tuple[int, int]:
    """(C1, C2) as two positive integers, or a one-line :class:`ConfigError`."""
    try:
        c1, c2 = (int(c) for c in channels)
    except (TypeError, ValueError):
        raise ConfigError(f"channels must be two positive integers C1,C2, got {channels!r}") from None
    if c1 < 1 or c2 < 1:
        raise ConfigError(f"channels must be two positive integers C1,C2, got {channels!r}")
    return c1, c2


def position_level(pos: Position, full_height: int) -> str:
    """The whole-network model's level of an edge: ``full``, ``half`` or ``hnu``."""
    if pos.group == "hnu":
        return "hnu"
    return "full" if pos.height == full_height else "half"


def edge_positions(channels: Sequence[int], resolution: Sequence[int]) -> dict[str, list[Position]]:
    """Every searched edge's position, genotype-agnostic: ``{"encoder": [9], "decoder": [9], "hnu": [8]}``.

    ``resolution`` is (W, H) of the input image; "hnu" lists one unit's 8 edges (all units are
    alike).
    """
    c1, c2 = (int(c) for c in channels)
    w, h = padded_size(resolution)
    full, half, quarter = (h, w), (h // 2, w // 2), (h // 4, w // 4)
    enc = [Position("encoder", 0, 3, c1, *full, "plain")]
    enc += [Position("encoder", i, c1, c1, *full, "plain") for i in range(1, 5)]
    enc += [Position("encoder", i, c2, c2, *half, "plain") for i in range(5, 9)]
    dec = [Position("decoder", i, c2, c2, *half, "plain") for i in range(0, 4)]
    dec += [Position("decoder", i, c1, c1, *full, "plain") for i in range(4, 8)]
    dec += [Position("decoder", 8, c1, 3, *full, "plain")]
    hnu = [Position("hnu", i, c2, c2, *quarter, "bn_folded") for i in range(HNU_EDGES)]
    assert len(enc) == ENCODER_EDGES and len(dec) == DECODER_EDGES
    return {"encoder": enc, "decoder": dec, "hnu": hnu}


def op_buildable(op: str, c_in: int, c_out: int) -> bool:
    """Whether op ``op`` can map c_in → c_out (e.g. skip_connect cannot change channels)."""
    try:
        make_op(op, c_in, c_out)
    except HblError:
        return False
    return True


def random_genotype(
    space: str = "paper", channels: Sequence[int] = (16, 32), units: int = 7, seed: int | random.Random = 0
) -> Genotype:
    """A uniformly random genotype of ``space`` (each edge picks among the ops that fit it)."""
    rng = seed if isinstance(seed, random.Random) else random.Random(seed)
    sp = get_space(space)
    c1, c2 = (int(c) for c in channels)

    def pick(ops: tuple[str, ...], c_in: int, c_out: int) -> str:
        return rng.choice([o for o in ops if op_buildable(o, c_in, c_out)])

    enc = [pick(sp.fcm, 3, c1)] + [pick(sp.fcm, c1, c1) for _ in range(4)] + [pick(sp.fcm, c2, c2) for _ in range(4)]
    dec = [pick(sp.fcm, c2, c2) for _ in range(4)] + [pick(sp.fcm, c1, c1) for _ in range(4)] + [pick(sp.fcm, c1, 3)]
    hnu = [[pick(sp.hnu, c2, c2) for _ in range(HNU_EDGES)] for _ in range(units)]
    return Genotype(encoder=enc, decoder=dec, hnu=hnu, space=space, channels=(c1, c2), units=units)


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------
@dataclass
class LatencyTable:
    """Measured (or estimated) op and fixed-part latencies of one space on one device/backend.

    ``entries``: ``{"op", "c_in", "c_out", "height", "width", "variant", "ms", ...}``, one per
    distinct key. ``fixed``: ``{"name", "per": "network"|"unit", "count", "ms", ...}`` where
    ``ms`` is the time of one occurrence. ``calibration``: ``{"scale", "offset_ms", ...}`` or None.
    """

    device: dict[str, Any]
    backend: dict[str, Any]
    resolution: tuple[int, int]  # (W, H) of the input image
    space: dict[str, Any]  # {"name", "fcm": [...], "hnu": [...]}
    channels: tuple[int, int]
    entries: list[dict[str, Any]]
    fixed: list[dict[str, Any]]
    dtype: str = "float32"
    units: int = 7
    estimate: bool = False
    label: str = ""
    date: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None
    format: str = FORMAT

    def __post_init__(self) -> None:
        self.resolution = tuple(int(v) for v in self.resolution)  # type: ignore[assignment]
        self.channels = tuple(int(v) for v in self.channels)  # type: ignore[assignment]
        if not self.label:
            self.label = ESTIMATE_LABEL if self.estimate else self.default_label()
        self._index = {
            (e["op"], int(e["c_in"]), int(e["c_out"]), int(e["height"]), int(e["width"]), e["variant"]): float(e["ms"])
            for e in self.entries
        }

    def default_label(self) -> str:
        dev = self.device.get("preset") or self.device.get("name", "?")
        return f"measured on {dev} with {self.backend.get('name', '?')} at {self.resolution[0]}x{self.resolution[1]}"

    # -- lookups ----------------------------------------------------------------------------
    def time(self, op: str, pos: Position) -> float | None:
        """ms of ``op`` at ``pos``, or None when the op cannot run there (not in the table)."""
        return self._index.get((op, pos.c_in, pos.c_out, pos.height, pos.width, pos.variant))

    def fixed_ms(self, units: int | None = None) -> float:
        """Total of the fixed parts for a network with ``units`` HNUs (the table's by default)."""
        units = self.units if units is None else units
        total = 0.0
        for f in self.fixed:
            n = int(f["count"]) * (units if f["per"] == "unit" else 1)
            total += n * float(f["ms"])
        return total

    # -- io ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "label": self.label,
            "estimate": self.estimate,
            "device": self.device,
            "backend": self.backend,
            "resolution": list(self.resolution),
            "padded": list(padded_size(self.resolution)),
            "dtype": self.dtype,
            "date": self.date,
            "space": self.space,
            "channels": list(self.channels),
            "units": self.units,
            "settings": self.settings,
            "calibration": self.calibration,
            "entries": self.entries,
            "fixed": self.fixed,
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        from ..runio import write_json

        return write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: Any, source: str = "latency table") -> "LatencyTable":
        _validate(data, source)
        return cls(
            device=data["device"], backend=data["backend"], resolution=data["resolution"], space=data["space"],
            channels=data["channels"], entries=data["entries"], fixed=data["fixed"], dtype=data["dtype"],
            units=data.get("units", 7), estimate=data["estimate"], label=data.get("label", ""),
            date=data.get("date", ""), settings=data.get("settings") or {}, calibration=data.get("calibration"),
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "LatencyTable":
        p = Path(path)
        if not p.is_file():
            raise LatencyTableError(f"latency table {str(p)!r} does not exist; write one with `hbl-edge profile --out`")
        from ..runio import read_json

        return cls.from_dict(read_json(p, LatencyTableError, "latency table"), source=str(p))


def load_table(path: str | os.PathLike[str]) -> LatencyTable:
    return LatencyTable.load(path)


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _validate(data: Any, source: str) -> None:
    def bad(msg: str) -> LatencyTableError:
        return LatencyTableError(f"{source}: {msg}")

    if not isinstance(data, dict):
        raise bad(f"expected a JSON object, got {type(data).__name__}")
    if data.get("format") != FORMAT:
        got = data.get("format")
        raise bad(f"unknown latency table format {got!r}; this version reads {FORMAT!r} (re-run `hbl-edge profile`)")
    for key in ("device", "backend", "resolution", "space", "channels", "entries", "fixed", "dtype", "estimate"):
        if key not in data:
            raise bad(f"missing key {key!r}")
    for key in ("device", "backend", "space"):
        if not isinstance(data[key], dict):
            raise bad(f"{key!r} must be an object")
    for key in ("resolution", "channels"):
        v = data[key]
        if not (isinstance(v, list) and len(v) == 2 and all(isinstance(i, int) and not isinstance(i, bool) and i > 0 for i in v)):
            raise bad(f"{key!r} must be two positive integers, got {v!r}")
    if not isinstance(data["estimate"], bool):
        raise bad("'estimate' must be true or false")
    sp = data["space"]
    if not isinstance(sp.get("name"), str) or not all(
        isinstance(sp.get(k), list) and sp[k] and all(isinstance(o, str) for o in sp[k]) for k in ("fcm", "hnu")
    ):
        raise bad("'space' must be {\"name\": str, \"fcm\": [op names], \"hnu\": [op names]}")
    if not isinstance(data["entries"], list) or not data["entries"]:
        raise bad("'entries' must be a non-empty list")
    for i, e in enumerate(data["entries"]):
        if not isinstance(e, dict):
            raise bad(f"entries[{i}] must be an object")
        missing = [k for k in ("op", "c_in", "c_out", "height", "width", "variant", "ms") if k not in e]
        if missing:
            raise bad(f"entries[{i}] misses {', '.join(missing)}")
        if e["variant"] not in VARIANTS:
            raise bad(f"entries[{i}] has variant {e['variant']!r}; expected one of {', '.join(VARIANTS)}")
        if not _num(e["ms"]) or e["ms"] < 0:
            raise bad(f"entries[{i}] ({e['op']}) has ms {e['ms']!r}; expected a finite number ≥ 0")
    if not isinstance(data["fixed"], list):
        raise bad("'fixed' must be a list")
    for i, f in enumerate(data["fixed"]):
        if not isinstance(f, dict) or any(k not in f for k in ("name", "per", "count", "ms")):
            raise bad(f"fixed[{i}] must be an object with name, per, count, ms")
        if f["per"] not in ("network", "unit"):
            raise bad(f"fixed[{i}] ({f['name']}) has per {f['per']!r}; expected 'network' or 'unit'")
        if not _num(f["ms"]) or f["ms"] < 0 or not isinstance(f["count"], int):
            raise bad(f"fixed[{i}] ({f['name']}) needs a finite ms ≥ 0 and an integer count")
    cal = data.get("calibration")
    if cal is not None and not (isinstance(cal, dict) and _num(cal.get("scale")) and _num(cal.get("offset_ms"))):
        raise bad("'calibration' must be null or an object with numeric 'scale' and 'offset_ms'")
    scales = (cal or {}).get("scales")
    if scales is not None and not (
        isinstance(scales, dict) and set(scales) <= set(CALIBRATION_TERMS) and all(_num(v) for v in scales.values())
    ):
        raise bad(f"'calibration.scales' must map some of {', '.join(CALIBRATION_TERMS)} to numbers")


def check_table(
    table: LatencyTable,
    *,
    space: str | None = None,
    channels: Sequence[int] | None = None,
    resolution: Sequence[int] | None = None,
) -> None:
    """Refuse, with a one-line :class:`LatencyTableError`, a table that does not fit the run."""
    fix = "profile again with matching options (`hbl-edge profile ...`)"
    if space is not None:
        sp = get_space(space)
        if table.space["name"] != space or list(sp.fcm) != table.space["fcm"] or list(sp.hnu) != table.space["hnu"]:
            raise LatencyTableError(
                f"the latency table was made for space {table.space['name']!r} with other ops than space "
                f"{space!r} here; {fix}"
            )
    if channels is not None and tuple(int(c) for c in channels) != table.channels:
        raise LatencyTableError(f"the latency table was made for channels {list(table.channels)}, the run uses {list(channels)}; {fix}")
    if resolution is not None and tuple(int(v) for v in resolution) != table.resolution:
        w, h = table.resolution
        raise LatencyTableError(
            f"the latency table was made at {w}x{h}, the budget is stated at {resolution[0]}x{resolution[1]}; {fix}"
        )


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------
def _get(alpha: Any, name: str) -> torch.Tensor:
    if isinstance(alpha, Mapping):
        if name not in alpha:
            raise KeyError(f"alpha dict misses {name!r}; expected alpha_encoder, alpha_decoder, alpha_hnu")
        return alpha[name]
    return getattr(alpha, name)


class LatencyModel:
    """LAT(α) and LAT(genotype) from a latency table (the whole-network model of the module docstring).

    Args:
        table: a :class:`LatencyTable` or a path to one.

    Example::

        model = LatencyModel(profile("cpu", "onnxruntime", (640, 360), calibrate=15))
        lat = model.expected({"alpha_encoder": a_e, "alpha_decoder": a_d, "alpha_hnu": a_h})
        loss = multiplicative(val_loss, lat, budget_ms=33.0, beta=0.07)
    """

    def __init__(self, table: LatencyTable | str | os.PathLike[str]) -> None:
        if not isinstance(table, LatencyTable):
            table = LatencyTable.load(table)
        self.table = table
        self.fcm: tuple[str, ...] = tuple(table.space["fcm"])
        self.hnu: tuple[str, ...] = tuple(table.space["hnu"])
        pos = edge_positions(table.channels, table.resolution)
        self.positions = pos
        full_h = pos["encoder"][0].height
        self.levels = {g: [position_level(p, full_h) for p in ps] for g, ps in pos.items()}
        self.t_encoder, self.m_encoder = self._grid(pos["encoder"], self.fcm)
        self.t_decoder, self.m_decoder = self._grid(pos["decoder"], self.fcm)
        self.t_hnu, self.m_hnu = self._grid(pos["hnu"], self.hnu)  # [8, n_hnu], same for every unit
        cal = table.calibration or {}
        self.offset_ms = float(cal.get("offset_ms", 0.0))
        common = float(cal.get("scale", 1.0))
        given = cal.get("scales") or {}
        #: s per term of CALIBRATION_TERMS (a calibration without per-level scales scales everything alike)
        self.scales: dict[str, float] = {k: float(given.get(k, common)) for k in CALIBRATION_TERMS}
        self.scale = common
        # per-edge weights: the level scale of each edge, for the differentiable sum
        self._w = {g: torch.tensor([self.scales[lv] for lv in self.levels[g]], dtype=torch.float64)
                   for g in ("encoder", "decoder")}

    def _grid(self, positions: list[Position], ops: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.zeros(len(positions), len(ops), dtype=torch.float64)
        ok = torch.zeros(len(positions), len(ops), dtype=torch.bool)
        for i, p in enumerate(positions):
            for j, op in enumerate(ops):
                v = self.table.time(op, p)
                if v is not None:
                    t[i, j], ok[i, j] = v, True
        if not bool(ok.any(dim=1).all()):
            raise LatencyTableError("the latency table misses every op at some position; profile it again")
        return t, ok

    @property
    def label(self) -> str:
        """What the numbers are (measured where/how, or an estimate); print it beside them."""
        return self.table.label

    @property
    def estimate(self) -> bool:
        return self.table.estimate

    @property
    def calibrated(self) -> bool:
        return self.table.calibration is not None

    def fixed_ms(self, units: int) -> float:
        return self.table.fixed_ms(units)

    def combine(self, terms: Mapping[str, Any]) -> Any:
        """Σ_k s_k · terms[k] + b over :data:`CALIBRATION_TERMS` (floats or tensors)."""
        return sum(self.scales[k] * terms[k] for k in CALIBRATION_TERMS) + self.offset_ms

    # -- differentiable ---------------------------------------------------------------------
    def expected_terms(self, alpha: Any) -> dict[str, torch.Tensor]:
        """Uncalibrated expected ms per level (``full``, ``half``, ``hnu``) and the ``fixed`` part."""
        a_enc, a_dec, a_hnu = (_get(alpha, n) for n in ("alpha_encoder", "alpha_decoder", "alpha_hnu"))
        n_f, n_h = len(self.fcm), len(self.hnu)
        for name, a, shape in (
            ("alpha_encoder", a_enc, (ENCODER_EDGES, n_f)),
            ("alpha_decoder", a_dec, (DECODER_EDGES, n_f)),
        ):
            if tuple(a.shape) != shape:
                raise ValueError(f"{name} has shape {tuple(a.shape)}, the table's space needs {shape}")
        if a_hnu.dim() != 3 or tuple(a_hnu.shape[1:]) != (HNU_EDGES, n_h):
            raise ValueError(f"alpha_hnu has shape {tuple(a_hnu.shape)}, the table's space needs [units, {HNU_EDGES}, {n_h}]")
        units = a_hnu.shape[0]

        def per_edge(a: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return (torch.softmax(a, dim=-1) * t.to(device=a.device, dtype=a.dtype)).sum(dim=-1)

        terms = {k: torch.zeros((), device=a_enc.device, dtype=a_enc.dtype) for k in CALIBRATION_TERMS}
        for group, a, t in (("encoder", a_enc, self.t_encoder), ("decoder", a_dec, self.t_decoder)):
            e = per_edge(a, t)
            for i, lv in enumerate(self.levels[group]):
                terms[lv] = terms[lv] + e[i]
        terms["hnu"] = per_edge(a_hnu, self.t_hnu).sum()
        terms["fixed"] = torch.as_tensor(self.fixed_ms(units), device=a_enc.device, dtype=a_enc.dtype)
        return terms

    def expected_raw(self, alpha: Any) -> torch.Tensor:
        """Σ_edges Σ_o softmax(α_e)_o · t_o + fixed part, before calibration (ms)."""
        return sum(self.expected_terms(alpha).values())  # type: ignore[return-value]

    def expected(self, alpha: Any) -> torch.Tensor:
        """LAT(α) in ms as a differentiable scalar (calibrated when the table has a calibration).

        ``alpha``: a dict (or an object with attributes) ``alpha_encoder [9, n_fcm]``,
        ``alpha_decoder [9, n_fcm]``, ``alpha_hnu [units, 8, n_hnu]``; op order is the space's.
        Ops a position cannot hold (absent from the table) count 0 ms: the supernet must not
        give them weight there.
        """
        return self.combine(self.expected_terms(alpha))

    __call__ = expected

    # -- discrete ---------------------------------------------------------------------------
    def _ops_ms(self, genotype: GenotypeLike) -> tuple[Genotype, dict[str, list[tuple[str, float]]]]:
        """Per group, (level, uncalibrated ms) of every edge of the genotype."""
        g = load_genotype(genotype)
        if g.space != self.table.space["name"] or tuple(g.channels) != self.table.channels:
            raise LatencyTableError(
                f"genotype is space {g.space!r} channels {list(g.channels)}; the latency table is space "
                f"{self.table.space['name']!r} channels {list(self.table.channels)}"
            )

        def lookup(group: str, idx: int, op: str, ops: tuple[str, ...], t: torch.Tensor, m: torch.Tensor) -> tuple[str, float]:
            if op not in ops:
                raise LatencyTableError(f"op {op!r} is not in the latency table's space; profile this space")
            j = ops.index(op)
            if not bool(m[idx, j]):
                raise LatencyTableError(f"op {op!r} cannot run at {group}[{idx}] (not in the latency table)")
            return self.levels[group][idx], float(t[idx, j])

        return g, {
            "encoder": [lookup("encoder", i, op, self.fcm, self.t_encoder, self.m_encoder) for i, op in enumerate(g.encoder)],
            "decoder": [lookup("decoder", i, op, self.fcm, self.t_decoder, self.m_decoder) for i, op in enumerate(g.decoder)],
            "hnu": [lookup("hnu", i, op, self.hnu, self.t_hnu, self.m_hnu) for unit in g.hnu for i, op in enumerate(unit)],
        }

    def terms(self, genotype: GenotypeLike) -> dict[str, float]:
        """Uncalibrated ms per term of the model: ``full``, ``half``, ``hnu`` (op sums) and ``fixed``."""
        g, per = self._ops_ms(genotype)
        out = {k: 0.0 for k in CALIBRATION_TERMS}
        for rows in per.values():
            for lv, ms in rows:
                out[lv] += ms
        out["fixed"] = self.fixed_ms(g.units)
        return out

    def breakdown(self, genotype: GenotypeLike) -> dict[str, float]:
        """Uncalibrated ms per part of a genotype: encoder, hnu, decoder, fixed."""
        g, per = self._ops_ms(genotype)
        return {
            "encoder": sum(ms for _, ms in per["encoder"]), "hnu": sum(ms for _, ms in per["hnu"]),
            "decoder": sum(ms for _, ms in per["decoder"]), "fixed": self.fixed_ms(g.units),
        }

    def predict_raw(self, genotype: GenotypeLike) -> float:
        """Σ op times + fixed parts, before calibration (ms)."""
        return sum(self.terms(genotype).values())

    def predict(self, genotype: GenotypeLike) -> float:
        """Predicted end-to-end ms of a genotype (the one-hot case of :meth:`expected`)."""
        return float(self.combine(self.terms(genotype)))

    def describe(self, genotype: GenotypeLike) -> dict[str, Any]:
        """The prediction with what it is for: device, backend, resolution, threads, model terms."""
        g = load_genotype(genotype)
        t = self.table
        settings = t.settings or {}
        cal = t.calibration or {}
        terms = self.terms(g)
        return {
            "predicted_ms": self.predict(g),
            "genotype": g.summary(),
            "device": t.device.get("preset") or t.device.get("name"),
            "machine": t.device.get("cpu") if not t.device.get("gpu") else t.device.get("gpu"),
            "backend": t.backend.get("name"),
            "backend_versions": t.backend.get("versions", {}),
            "resolution": list(t.resolution),
            # None in the table means the backend's default (what OrtRunner uses when not told otherwise)
            "threads": settings.get("threads") if settings.get("threads") is not None else "default",
            "allow_spinning": settings.get("allow_spinning") if settings.get("allow_spinning") is not None else "default",
            "estimate": t.estimate,
            "label": t.label,
            "calibration": cal.get("kind") if t.calibration is not None else None,
            "terms_ms": terms,
            "scales": dict(self.scales),
            "offset_ms": self.offset_ms,
            "raw_ms": sum(terms.values()),
            "table_date": t.date,
        }

    def one_hot_alpha(self, genotype: GenotypeLike, big: float = 1e4) -> dict[str, torch.Tensor]:
        """α whose softmax is (numerically) one-hot on ``genotype`` — for checks and tests."""
        g = load_genotype(genotype)

        def hot(ops: Sequence[str], space: tuple[str, ...]) -> torch.Tensor:
            a = torch.zeros(len(ops), len(space), dtype=torch.float64)
            for i, op in enumerate(ops):
                a[i, space.index(op)] = big
            return a

        return {
            "alpha_encoder": hot(g.encoder, self.fcm),
            "alpha_decoder": hot(g.decoder, self.fcm),
            "alpha_hnu": torch.stack([hot(u, self.hnu) for u in g.hnu]),
        }


# ---------------------------------------------------------------------------------------------
# Objectives
# ---------------------------------------------------------------------------------------------
def _budget(budget_ms: float) -> float:
    if not (isinstance(budget_ms, (int, float)) and budget_ms > 0 and math.isfinite(budget_ms)):
        raise ConfigError(f"the latency budget must be a positive number of ms, got {budget_ms!r}")
    return float(budget_ms)


def additive(loss: torch.Tensor, lat: torch.Tensor, budget_ms: float, mu: float) -> torch.Tensor:
    """L + μ · LAT / T."""
    return loss + mu * lat / _budget(budget_ms)


def multiplicative(loss: torch.Tensor, lat: torch.Tensor, budget_ms: float, beta: float) -> torch.Tensor:
    """L · (LAT / T)^β (ProxylessNAS / FBNet form; β > 0 penalises going over the budget)."""
    return loss * (lat / _budget(budget_ms)) ** beta


def hinge(loss: torch.Tensor, lat: torch.Tensor, budget_ms: float, beta: float) -> torch.Tensor:
    """L · max(1, LAT / T)^β: the budget as a constraint (MnasNet's "hard" form).

    Under the budget the latency term is exactly 1 and the search optimises quality alone; over
    it, the objective grows like the multiplicative form. Use a larger β (e.g. 1–2) than for the
    multiplicative form, which scales the objective everywhere and so never enforces T.
    """
    return loss * torch.clamp(lat / _budget(budget_ms), min=1.0) ** beta


OBJECTIVES = {"additive": additive, "multiplicative": multiplicative, "hinge": hinge}


# ---------------------------------------------------------------------------------------------
# Choosing a model for a search
# ---------------------------------------------------------------------------------------------
def load_latency_model(
    device: str,
    resolution: Sequence[int],
    space: str = "paper",
    channels: Sequence[int] = (16, 32),
    latency_table: str | os.PathLike[str] | None = None,
    device_tree: str | os.PathLike[str] | None = None,
) -> LatencyModel:
    """The latency model a search uses: a measured table when given, else a roofline estimate.

    The table is checked against the run (space, channels, resolution). Without one, the
    device preset's roofline estimate is used (``jetson`` is detected from the device tree, and
    off a Jetson needs the table). Check :attr:`LatencyModel.estimate` / :attr:`~LatencyModel.label`
    to say which in the run's outputs.
    """
    from .devices import resolve_device

    spec = resolve_device(device, latency_table=latency_table, device_tree=device_tree)
    if latency_table is not None:
        table = LatencyTable.load(latency_table)
        check_table(table, space=space, channels=channels, resolution=resolution)
        return LatencyModel(table)
    from .roofline import estimate_table

    assert spec is not None
    return LatencyModel(estimate_table(spec.name, resolution, space=space, channels=channels))


def measure_network(genotype: GenotypeLike, backend: str = "onnxruntime", resolution: Sequence[int] = (320, 180), **kw: Any) -> float:
    """End-to-end median ms of a genotype's network as deployed (see :func:`hbl_edge.search.deployed.measure_network`)."""
    from .deployed import measure_network as _measure

    return _measure(genotype, backend, resolution, **kw)


__all__ = [
    "CALIBRATION_TERMS", "ESTIMATE_LABEL", "FORMAT", "LEVELS", "LatencyModel", "LatencyTable", "LatencyTableError", "OBJECTIVES",
    "Position", "additive", "check_table", "edge_positions", "load_latency_model", "load_table", "measure_network",
    "multiplicative", "op_buildable", "padded_size", "parse_channels", "position_level", "random_genotype",
]
