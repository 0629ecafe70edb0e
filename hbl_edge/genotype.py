"""Genotypes: the discrete architecture a search derives, as a plain versioned JSON file.

Format ``hbl-genotype/1`` (DESIGN §3), the paper network::

    {"format": "hbl-genotype/1", "space": "paper", "channels": [16, 32], "units": 7,
     "encoder": [9 op names], "decoder": [9 op names], "hnu": [[8 op names] × units]}

Each HNU list holds the 4 ops of the R branch followed by the 4 ops of the I branch.

Format ``hbl-genotype/2`` (DESIGN §10), the resolution-decoupled edge network: the same keys
(they describe the HNU network that runs at low resolution and whose tail now outputs the
task's maps) plus a ``macro`` section (:class:`Macro`)::

    "macro": {"scale": 4, "model": "retinex", "map_channels": 1, "upsample": "guided",
              "floor": 0.01, "radius": 1, "eps": 0.01, "refine": [], "refine_channels": 8}

A genotype without a macro section is always written as ``hbl-genotype/1`` (so older readers
keep reading the paper network), one with a macro section as ``hbl-genotype/2``; both are read.
A genotype alone rebuilds the exact network (:meth:`hbl_edge.network.Network.from_genotype`
dispatches on the macro section) with no search code. Built-in named genotypes
(:data:`NAMED_GENOTYPES`) are accepted wherever a path is.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from .errors import GenotypeError
from .ops import get_space
from .runio import read_json, write_json

FORMAT = "hbl-genotype/1"  # the paper network (no macro section)
FORMAT_V2 = "hbl-genotype/2"  # + the edge macro-architecture (DESIGN §10)
FORMATS = (FORMAT, FORMAT_V2)
ENCODER_EDGES = 9  # head + 2 residual pairs at full res + 2 residual pairs at 1/2
DECODER_EDGES = 9  # 2 residual pairs at 1/2 + 2 residual pairs at full res + tail
HNU_EDGES = 8  # 4 ops in the R branch, then 4 in the I branch
BRANCH_OPS = HNU_EDGES // 2


# ---------------------------------------------------------------------------------------------
# The edge macro-architecture (DESIGN §10)
# ---------------------------------------------------------------------------------------------
MACRO_SCALES = (1, 2, 4, 8)
#: The inverse model applied at full resolution: retinex x = y ⊘ max(L, floor) (low light);
#: scattering J = (y − A) ⊘ max(t, floor) + A (haze, underwater; A is the airlight / the
#: background light B, one RGB value per image).
INVERSE_MODELS = ("retinex", "scattering")
#: Map upsamplers (hbl_edge.upsample): plain bilinear, guided-filter upsampling with the
#: luminance as guide, or with a guide computed by a learned 1×1 network.
UPSAMPLERS = ("bilinear", "guided", "learned")
#: Ops allowed in the full-resolution refinement branch: those that can change channels
#: (its first op maps 3→C_r, its last C_r→3). ``mix_1x1``, ``boxmix_3x3`` and ``boxmix_5x5`` are
#: the MatMul ops (hbl_edge.ops) made for it: with 3 channels a Conv node costs more than its arithmetic.
REFINE_OPS = ("conv_1x1", "conv_3x3", "conv_5x5", "dilconv_3x3", "sepconv_3x3", "dilsepconv_3x3", "conv_3x3_half",
              "mix_1x1", "boxmix_3x3", "boxmix_5x5")
MAX_REFINE_OPS = 4
#: Keys a macro section may omit, with the value they then take (fixed for hbl-genotype/2).
MACRO_DEFAULTS = {"radius": 1, "eps": 1e-2, "refine": (), "refine_channels": 8}
MACRO_KEYS = ("scale", "model", "map_channels", "upsample", "floor") + tuple(MACRO_DEFAULTS)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class Macro:
    """The macro choices of a resolution-decoupled edge network (validated on construction).

    Attributes:
        scale: s ∈ {1, 2, 4, 8}; the HNU network sees the input box-downscaled by s.
        model: ``retinex`` or ``scattering`` (:data:`INVERSE_MODELS`).
        map_channels: channels of L (retinex) or t (scattering): 1 or 3. Scattering also
            estimates A (3 channels, one value per image) beside t.
        upsample: how the low-resolution map reaches full resolution (:data:`UPSAMPLERS`).
        floor: ε in max(L, ε) or t₀ in max(t, t₀), in (0, 1).
        radius: box radius of the guided filter at low resolution (window 2r+1).
        eps: guided-filter regulariser, on a guide normalised to mean 1.
        refine: ops of the optional full-resolution refinement branch (() = off).
        refine_channels: width C_r inside the refinement branch.
    """

    scale: int
    model: str
    map_channels: int
    upsample: str
    floor: float
    radius: int = MACRO_DEFAULTS["radius"]
    eps: float = MACRO_DEFAULTS["eps"]
    refine: tuple[str, ...] = ()
    refine_channels: int = MACRO_DEFAULTS["refine_channels"]

    def __post_init__(self) -> None:
        if isinstance(self.refine, (list, tuple)):
            object.__setattr__(self, "refine", tuple(self.refine))
        for name in ("floor", "eps"):  # 1 and 1.0 must give equal (and equally hashed) genotypes
            value = getattr(self, name)
            if _is_number(value):
                object.__setattr__(self, name, float(value))
        self.validate()

    def validate(self) -> None:
        if not _is_int(self.scale) or self.scale not in MACRO_SCALES:
            raise GenotypeError(f"'macro.scale' must be one of {', '.join(map(str, MACRO_SCALES))}, got {self.scale!r}")
        if self.model not in INVERSE_MODELS:
            raise GenotypeError(f"'macro.model' must be one of {', '.join(INVERSE_MODELS)}, got {self.model!r}")
        if not _is_int(self.map_channels) or self.map_channels not in (1, 3):
            raise GenotypeError(f"'macro.map_channels' must be 1 or 3, got {self.map_channels!r}")
        if self.upsample not in UPSAMPLERS:
            raise GenotypeError(f"'macro.upsample' must be one of {', '.join(UPSAMPLERS)}, got {self.upsample!r}")
        if not _is_number(self.floor) or not 0.0 < self.floor < 1.0:
            raise GenotypeError(f"'macro.floor' must be a number in (0, 1), got {self.floor!r}")
        if not _is_int(self.radius) or not 1 <= self.radius <= 8:
            raise GenotypeError(f"'macro.radius' must be an integer in 1..8, got {self.radius!r}")
        if not _is_number(self.eps) or self.eps <= 0.0:
            raise GenotypeError(f"'macro.eps' must be a positive number, got {self.eps!r}")
        if not isinstance(self.refine, tuple) or not all(isinstance(o, str) for o in self.refine):
            raise GenotypeError("'macro.refine' must be a list of op names ([] switches the branch off)")
        if len(self.refine) > MAX_REFINE_OPS:
            raise GenotypeError(f"'macro.refine' has {len(self.refine)} ops, at most {MAX_REFINE_OPS} are allowed")
        for i, op in enumerate(self.refine):
            if op not in REFINE_OPS:
                raise GenotypeError(f"'macro.refine'[{i}] is {op!r}; allowed: {', '.join(REFINE_OPS)}")
        if not _is_int(self.refine_channels) or not 1 <= self.refine_channels <= 64:
            raise GenotypeError(f"'macro.refine_channels' must be an integer in 1..64, got {self.refine_channels!r}")

    @property
    def out_channels(self) -> int:
        """Channels the HNU network's tail outputs: the map (+ A's 3 for scattering)."""
        return self.map_channels + (3 if self.model == "scattering" else 0)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["refine"] = list(self.refine)
        return {k: d[k] for k in MACRO_KEYS}

    @classmethod
    def from_dict(cls, data: Any) -> "Macro":
        if not isinstance(data, dict):
            raise GenotypeError(f"'macro' must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(MACRO_KEYS))
        if unknown:
            raise GenotypeError(f"unknown key(s) macro.{', macro.'.join(unknown)}; allowed: {', '.join(MACRO_KEYS)}")
        missing = [k for k in MACRO_KEYS if k not in data and k not in MACRO_DEFAULTS]
        if missing:
            raise GenotypeError(f"missing key(s) macro.{', macro.'.join(missing)}")
        kw = {**MACRO_DEFAULTS, **data}
        if not isinstance(kw["refine"], (list, tuple)):
            raise GenotypeError("'macro.refine' must be a list of op names ([] switches the branch off)")
        return cls(**kw)

    def summary(self) -> str:
        up = self.upsample if self.upsample == "bilinear" else f"{self.upsample}(r{self.radius})"
        maps = f"{'L' if self.model == 'retinex' else 't'}{self.map_channels}"
        refine = "+".join(self.refine) + f"@{self.refine_channels}" if self.refine else "none"
        return f"s{self.scale} {self.model} {maps} {up} refine:{refine}"


@dataclass(frozen=True)
class Genotype:
    """A fully specified network architecture (validated on construction)."""

    encoder: tuple[str, ...]
    decoder: tuple[str, ...]
    hnu: tuple[tuple[str, ...], ...]
    space: str = "paper"
    channels: tuple[int, int] = (16, 32)
    units: int = 7
    #: The edge macro-architecture (DESIGN §10); None = the paper network.
    macro: Optional[Macro] = None
    #: ``None`` picks the format the content needs: hbl-genotype/2 with a macro, else /1.
    format: Optional[str] = field(default=None)

    def __post_init__(self) -> None:
        if isinstance(self.macro, dict):
            object.__setattr__(self, "macro", Macro.from_dict(self.macro))
        if self.format is None:
            object.__setattr__(self, "format", FORMAT if self.macro is None else FORMAT_V2)
        # Normalise lists (from JSON) to tuples so genotypes are hashable and comparable.
        object.__setattr__(self, "encoder", tuple(self.encoder))
        object.__setattr__(self, "decoder", tuple(self.decoder))
        object.__setattr__(self, "hnu", tuple(tuple(u) for u in self.hnu))
        if not isinstance(self.channels, (list, tuple)):
            raise GenotypeError(f"'channels' must be two positive integers [C1, C2], got {self.channels!r}")
        object.__setattr__(self, "channels", tuple(self.channels))
        self.validate()

    def validate(self) -> None:
        if self.format not in FORMATS:
            raise GenotypeError(
                f"unknown genotype format {self.format!r}; this version of hbl-edge reads {_formats_text()}"
            )
        if self.macro is not None and not isinstance(self.macro, Macro):
            raise GenotypeError(f"'macro' must be a Macro or a JSON object, got {type(self.macro).__name__}")
        if self.format == FORMAT and self.macro is not None:
            raise GenotypeError(f"a 'macro' section needs format {FORMAT_V2!r}, not {FORMAT!r}")
        if self.format == FORMAT_V2 and self.macro is None:
            raise GenotypeError(
                f"format {FORMAT_V2!r} needs a 'macro' section; write {FORMAT!r} for the paper network"
            )
        space = get_space(self.space)
        if (
            len(self.channels) != 2
            or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in self.channels)
        ):
            raise GenotypeError(f"'channels' must be two positive integers [C1, C2], got {list(self.channels)}")
        if not isinstance(self.units, int) or isinstance(self.units, bool) or self.units < 1:
            raise GenotypeError(f"'units' must be a positive integer, got {self.units!r}")
        _check_edges("encoder", self.encoder, ENCODER_EDGES, space.fcm, space.name)
        _check_edges("decoder", self.decoder, DECODER_EDGES, space.fcm, space.name)
        if len(self.hnu) != self.units:
            raise GenotypeError(f"'hnu' has {len(self.hnu)} units but 'units' says {self.units}")
        for i, unit in enumerate(self.hnu):
            _check_edges(f"hnu[{i}]", unit, HNU_EDGES, space.hnu, space.name)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        out = {"format": d.pop("format")}
        out.update(
            space=self.space,
            channels=list(self.channels),
            units=self.units,
            encoder=list(self.encoder),
            decoder=list(self.decoder),
            hnu=[list(u) for u in self.hnu],
        )
        if self.macro is not None:
            out["macro"] = self.macro.to_dict()
        return out

    @property
    def is_edge(self) -> bool:
        """Whether this is a resolution-decoupled edge network (it has a macro section)."""
        return self.macro is not None

    @classmethod
    def from_dict(cls, data: Any, source: str = "genotype") -> "Genotype":
        if not isinstance(data, dict):
            raise GenotypeError(f"{source}: expected a JSON object, got {type(data).__name__}")
        if "format" not in data:
            raise GenotypeError(f"{source}: missing 'format' (expected {_formats_text()})")
        if data["format"] not in FORMATS:
            raise GenotypeError(
                f"{source}: unknown genotype format {data['format']!r}; this version reads {_formats_text()}"
            )
        allowed = {"format", "space", "channels", "units", "encoder", "decoder", "hnu"}
        if data["format"] == FORMAT_V2:
            allowed.add("macro")
        elif "macro" in data:
            raise GenotypeError(f"{source}: a 'macro' section needs format {FORMAT_V2!r}, not {FORMAT!r}")
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise GenotypeError(f"{source}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
        missing = [k for k in ("encoder", "decoder", "hnu") if k not in data]
        if missing:
            raise GenotypeError(f"{source}: missing key(s) {', '.join(missing)}")
        hnu = data["hnu"]
        if not isinstance(hnu, list) or not all(isinstance(u, list) for u in hnu):
            raise GenotypeError(f"{source}: 'hnu' must be a list of lists of op names")
        encoder = _str_list(data["encoder"], "encoder", source)
        decoder = _str_list(data["decoder"], "decoder", source)
        units = [_str_list(u, f"hnu[{i}]", source) for i, u in enumerate(hnu)]
        try:
            macro = Macro.from_dict(data["macro"]) if "macro" in data else None
            return cls(
                encoder=encoder,
                decoder=decoder,
                hnu=units,
                space=data.get("space", "paper"),
                channels=data.get("channels", [16, 32]),
                units=data.get("units", len(hnu)),
                macro=macro,
                format=data["format"],
            )
        except GenotypeError as e:
            raise GenotypeError(f"{source}: {e}") from None

    def save(self, path: str | Path) -> Path:
        return write_json(path, self.to_dict())

    def summary(self) -> str:
        """A compact one-line description (op counts), for logs and progress displays."""
        counts: dict[str, int] = {}
        for op in (*self.encoder, *self.decoder, *(o for u in self.hnu for o in u)):
            counts[op] = counts.get(op, 0) + 1
        ops = " ".join(f"{k}×{v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
        if self.macro is None:
            return ops
        c1, c2 = self.channels
        return f"edge {self.macro.summary()} {c1}/{c2}×{self.units} | {ops}"


def _formats_text() -> str:
    return " or ".join(repr(f) for f in FORMATS)


def _str_list(value: Any, name: str, source: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise GenotypeError(f"{source}: '{name}' must be a list of op names")
    return value


def _check_edges(name: str, ops: tuple[str, ...], n: int, allowed: tuple[str, ...], space: str) -> None:
    if len(ops) != n:
        raise GenotypeError(f"'{name}' has {len(ops)} edges, expected {n}")
    for i, op in enumerate(ops):
        if op not in allowed:
            raise GenotypeError(
                f"'{name}'[{i}] is {op!r}, not an op of the {space!r} space here; allowed: {', '.join(allowed)}"
            )


def _uniform(op: str, units: int = 7) -> Genotype:
    return Genotype(encoder=[op] * ENCODER_EDGES, decoder=[op] * DECODER_EDGES, hnu=[[op] * HNU_EDGES] * units)


_S = "skip_connect"
NAMED_GENOTYPES: dict[str, Genotype] = {
    # The architecture the paper's authors released for LOL (their reference code).
    "hbl-lol-2022": Genotype(
        encoder=["dilconv_3x3", "dilconv_3x3", "conv_5x5", "dilconv_3x3", "dilconv_3x3",
                 "conv_5x5", "conv_3x3", "conv_3x3", "dilconv_3x3"],
        decoder=["conv_3x3", "conv_5x5", "conv_3x3", "conv_3x3", "conv_5x5",
                 "conv_5x5", "conv_5x5", "conv_5x5", "conv_1x1"],
        hnu=[
            ["conv_3x3", "conv_1x1", "conv_1x1", "conv_1x1", _S, _S, _S, _S],
            ["resdilconv_3x3", "conv_3x3", "denseblocks_3x3", "dilconv_3x3", _S, _S, "resconv_3x3", _S],
            ["conv_1x1", "dilconv_3x3", "denseblocks_1x1", "denseblocks_3x3", _S, "resdilconv_3x3", "resconv_3x3", _S],
            ["denseblocks_1x1", "denseblocks_3x3", "denseblocks_3x3", "conv_1x1", "resconv_1x1", "resdilconv_3x3", _S, _S],
            ["dilconv_3x3", "conv_1x1", "denseblocks_1x1", "conv_1x1", _S, _S, _S, _S],
            ["denseblocks_3x3", "dilconv_3x3", "dilconv_3x3", "conv_1x1", "resconv_3x3", "resconv_3x3", _S, _S],
            ["denseblocks_3x3", "conv_1x1", "denseblocks_3x3", "conv_3x3", "resdilconv_3x3", _S, "resconv_3x3", _S],
        ],
    ),
    # Hand-designed baseline of the same shape: every edge a plain 3×3 conv.
    "conv3x3": _uniform("conv_3x3"),
}



def edge_genotype(
    *, scale: int, model: str, map_channels: int = 1, upsample: str = "guided", floor: float | None = None,
    channels: tuple[int, int] = (8, 16), units: int = 2, fcm: str = "conv_3x3",
    hnu: tuple[str, ...] = ("conv_3x3",) * 4 + ("conv_3x3", "conv_1x1", _S, _S),
    radius: int = MACRO_DEFAULTS["radius"], eps: float = MACRO_DEFAULTS["eps"],
    refine: tuple[str, ...] = (), refine_channels: int = MACRO_DEFAULTS["refine_channels"], space: str = "edge",
) -> Genotype:
    """A hand-written edge genotype: one op on every encoder/decoder edge, one HNU pattern for
    every unit (R branch 4 ops, then I branch 4 ops). ``floor`` defaults to ε = 0.01 (retinex)
    or t₀ = 0.05 (scattering)."""
    if floor is None:
        floor = 0.01 if model == "retinex" else 0.05
    return Genotype(
        encoder=[fcm] * ENCODER_EDGES, decoder=[fcm] * DECODER_EDGES, hnu=[list(hnu)] * units, space=space,
        channels=channels, units=units,
        macro=Macro(scale=scale, model=model, map_channels=map_channels, upsample=upsample, floor=floor,
                    radius=radius, eps=eps, refine=refine, refine_channels=refine_channels),
    )


_PAPER = NAMED_GENOTYPES["hbl-lol-2022"]
# Hand-picked edge genotypes (DESIGN §10): starting points and the seeds of the macro search.
# docs/benchmarks.md ("What the macro-architecture buys") has their quality and latency.
NAMED_GENOTYPES.update({
    # low light, SCI's latency tier: maps at 1/8, a small 2-unit HNU network
    "edge-lol-s8": edge_genotype(scale=8, model="retinex", map_channels=1, channels=(8, 16), units=2),
    # low light, Zero-DCE++'s tier: maps at 1/4, 16/32 wide, 3 units
    "edge-lol-s4": edge_genotype(scale=4, model="retinex", map_channels=1, channels=(16, 32), units=3),
    # the paper's searched LOL network, unchanged inside, estimating L at 1/4
    "edge-lol-s4-paper": Genotype(
        encoder=_PAPER.encoder, decoder=_PAPER.decoder, hnu=_PAPER.hnu, space="paper", channels=(16, 32), units=7,
        macro=Macro(scale=4, model="retinex", map_channels=1, upsample="guided", floor=0.01),
    ),
    # dehazing: t (1 channel) and the airlight A at 1/4
    "edge-haze-s4": edge_genotype(scale=4, model="scattering", map_channels=1, channels=(8, 16), units=2),
    # underwater: t per channel and the background light B at 1/4
    "edge-uw-s4": edge_genotype(scale=4, model="scattering", map_channels=3, channels=(8, 16), units=2),
    # the same with one boxmix_5x5 refinement: all 55 underwater pairs 19.45 ± 0.21 / .795 after
    # 2000 steps, 3 seeds (PhysicalNN 19.39 / .793), 7.5 ms at 600×400 beside PhysicalNN's 21.3
    # (docs/benchmarks.md, bench/results/edge_underwater_boxmix5_2000_seeds.json)
    "edge-uw-s4-box5": edge_genotype(scale=4, model="scattering", map_channels=3, channels=(8, 16), units=2,
                                     refine=("boxmix_5x5",)),
})

GenotypeLike = Union[Genotype, str, Path]


def load_genotype(spec: GenotypeLike) -> Genotype:
    """A genotype from a :class:`Genotype`, a built-in name, or a path to a JSON file."""
    if isinstance(spec, Genotype):
        return spec
    text = str(spec)
    if text in NAMED_GENOTYPES:
        return NAMED_GENOTYPES[text]
    path = Path(text)
    if not path.exists():
        raise GenotypeError(
            f"genotype {text!r} is neither a built-in name ({', '.join(NAMED_GENOTYPES)}) nor an existing file"
        )
    if path.is_dir():
        path = path / "genotype.json"
        if not path.exists():
            raise GenotypeError(f"{spec}: a directory without genotype.json; pass the genotype file itself")
    return Genotype.from_dict(read_json(path, GenotypeError, "genotype file"), source=str(path))
