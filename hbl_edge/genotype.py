"""Genotypes: the discrete architecture a search derives, as a plain versioned JSON file.

Format ``hbl-genotype/1`` (DESIGN §3)::

    {"format": "hbl-genotype/1", "space": "paper", "channels": [16, 32], "units": 7,
     "encoder": [9 op names], "decoder": [9 op names], "hnu": [[8 op names] × units]}

Each HNU list holds the 4 ops of the R branch followed by the 4 ops of the I branch. A genotype
alone rebuilds the exact network (:meth:`hbl_edge.network.Network.from_genotype`) with no
search code. Built-in named genotypes (:data:`NAMED_GENOTYPES`) are accepted wherever a path is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Union

from .errors import GenotypeError
from .ops import get_space
from .runio import read_json, write_json

FORMAT = "hbl-genotype/1"
ENCODER_EDGES = 9  # head + 2 residual pairs at full res + 2 residual pairs at 1/2
DECODER_EDGES = 9  # 2 residual pairs at 1/2 + 2 residual pairs at full res + tail
HNU_EDGES = 8  # 4 ops in the R branch, then 4 in the I branch
BRANCH_OPS = HNU_EDGES // 2


@dataclass(frozen=True)
class Genotype:
    """A fully specified network architecture (validated on construction)."""

    encoder: tuple[str, ...]
    decoder: tuple[str, ...]
    hnu: tuple[tuple[str, ...], ...]
    space: str = "paper"
    channels: tuple[int, int] = (16, 32)
    units: int = 7
    format: str = field(default=FORMAT)

    def __post_init__(self) -> None:
        # Normalise lists (from JSON) to tuples so genotypes are hashable and comparable.
        object.__setattr__(self, "encoder", tuple(self.encoder))
        object.__setattr__(self, "decoder", tuple(self.decoder))
        object.__setattr__(self, "hnu", tuple(tuple(u) for u in self.hnu))
        if not isinstance(self.channels, (list, tuple)):
            raise GenotypeError(f"'channels' must be two positive integers [C1, C2], got {self.channels!r}")
        object.__setattr__(self, "channels", tuple(self.channels))
        self.validate()

    def validate(self) -> None:
        if self.format != FORMAT:
            raise GenotypeError(
                f"unknown genotype format {self.format!r}; this version of hbl-edge reads {FORMAT!r}"
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
        return out

    @classmethod
    def from_dict(cls, data: Any, source: str = "genotype") -> "Genotype":
        if not isinstance(data, dict):
            raise GenotypeError(f"{source}: expected a JSON object, got {type(data).__name__}")
        if "format" not in data:
            raise GenotypeError(f"{source}: missing 'format' (expected {FORMAT!r})")
        if data["format"] != FORMAT:
            raise GenotypeError(
                f"{source}: unknown genotype format {data['format']!r}; this version reads {FORMAT!r}"
            )
        allowed = {"format", "space", "channels", "units", "encoder", "decoder", "hnu"}
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
            return cls(
                encoder=encoder,
                decoder=decoder,
                hnu=units,
                space=data.get("space", "paper"),
                channels=data.get("channels", [16, 32]),
                units=data.get("units", len(hnu)),
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
        return " ".join(f"{k}×{v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


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
