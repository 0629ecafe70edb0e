"""Tests of genotypes (hbl_edge.genotype): built-in data, JSON io, validation errors, summary."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from hbl_edge.errors import GenotypeError, HblError
from hbl_edge.genotype import (
    DECODER_EDGES,
    Macro,
    edge_genotype,
    ENCODER_EDGES,
    FORMAT,
    FORMAT_V2,
    HNU_EDGES,
    NAMED_GENOTYPES,
    Genotype,
    load_genotype,
)
from hbl_edge.ops import SPACES

S = "skip_connect"
# The architecture the HBL authors released for LOL (DESIGN §3 / the reproduction issue).
HBL_LOL_2022 = {
    "encoder": ["dilconv_3x3", "dilconv_3x3", "conv_5x5", "dilconv_3x3", "dilconv_3x3",
                "conv_5x5", "conv_3x3", "conv_3x3", "dilconv_3x3"],
    "decoder": ["conv_3x3", "conv_5x5", "conv_3x3", "conv_3x3", "conv_5x5",
                "conv_5x5", "conv_5x5", "conv_5x5", "conv_1x1"],
    "hnu": [
        ["conv_3x3", "conv_1x1", "conv_1x1", "conv_1x1", S, S, S, S],
        ["resdilconv_3x3", "conv_3x3", "denseblocks_3x3", "dilconv_3x3", S, S, "resconv_3x3", S],
        ["conv_1x1", "dilconv_3x3", "denseblocks_1x1", "denseblocks_3x3", S, "resdilconv_3x3", "resconv_3x3", S],
        ["denseblocks_1x1", "denseblocks_3x3", "denseblocks_3x3", "conv_1x1", "resconv_1x1", "resdilconv_3x3", S, S],
        ["dilconv_3x3", "conv_1x1", "denseblocks_1x1", "conv_1x1", S, S, S, S],
        ["denseblocks_3x3", "dilconv_3x3", "dilconv_3x3", "conv_1x1", "resconv_3x3", "resconv_3x3", S, S],
        ["denseblocks_3x3", "conv_1x1", "denseblocks_3x3", "conv_3x3", "resdilconv_3x3", S, "resconv_3x3", S],
    ],
}
KEYS = ["format", "space", "channels", "units", "encoder", "decoder", "hnu"]


def _valid_dict() -> dict:
    return {
        "format": "hbl-genotype/1",
        "space": "paper",
        "channels": [16, 32],
        "units": 7,
        "encoder": list(HBL_LOL_2022["encoder"]),
        "decoder": list(HBL_LOL_2022["decoder"]),
        "hnu": [list(u) for u in HBL_LOL_2022["hnu"]],
    }


def _write(tmp_path: Path, data, name: str = "g.json") -> Path:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    return p


def _one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert isinstance(excinfo.value, HblError)
    assert msg and "\n" not in msg, repr(msg)
    return msg


# ---------------------------------------------------------------------------------------------
# Built-in genotypes
# ---------------------------------------------------------------------------------------------
class TestNamedGenotypes:
    def test_names(self):
        assert {"hbl-lol-2022", "conv3x3"} <= set(NAMED_GENOTYPES)
        assert {"edge-lol-s8", "edge-lol-s4", "edge-lol-s4-paper", "edge-haze-s4", "edge-uw-s4"} <= set(NAMED_GENOTYPES)

    def test_paper_genotypes_stay_v1(self):
        for name in ("hbl-lol-2022", "conv3x3"):
            assert NAMED_GENOTYPES[name].format == FORMAT and NAMED_GENOTYPES[name].macro is None

    def test_hbl_lol_2022_exact(self):
        g = NAMED_GENOTYPES["hbl-lol-2022"]
        assert list(g.encoder) == HBL_LOL_2022["encoder"]
        assert list(g.decoder) == HBL_LOL_2022["decoder"]
        assert [list(u) for u in g.hnu] == HBL_LOL_2022["hnu"]
        assert g.space == "paper" and g.channels == (16, 32) and g.units == 7 and g.format == FORMAT

    def test_hbl_lol_2022_branches(self):
        # First 4 ops of an HNU list are the R branch, last 4 the I branch.
        g = NAMED_GENOTYPES["hbl-lol-2022"]
        assert g.hnu[0][:4] == ("conv_3x3", "conv_1x1", "conv_1x1", "conv_1x1")
        assert g.hnu[0][4:] == (S,) * 4
        assert g.hnu[4][4:] == (S,) * 4

    def test_conv3x3(self):
        g = NAMED_GENOTYPES["conv3x3"]
        assert g.encoder == ("conv_3x3",) * 9 and g.decoder == ("conv_3x3",) * 9
        assert g.hnu == (("conv_3x3",) * 8,) * 7
        assert g.space == "paper" and g.channels == (16, 32) and g.units == 7

    @pytest.mark.parametrize("name", sorted(NAMED_GENOTYPES))
    def test_named_are_valid_and_round_trip(self, name):
        g = NAMED_GENOTYPES[name]
        g.validate()
        assert Genotype.from_dict(json.loads(json.dumps(g.to_dict()))) == g

    def test_edge_constants(self):
        assert (ENCODER_EDGES, DECODER_EDGES, HNU_EDGES) == (9, 9, 8)
        assert FORMAT == "hbl-genotype/1" and FORMAT_V2 == "hbl-genotype/2"


# ---------------------------------------------------------------------------------------------
# Construction and value semantics
# ---------------------------------------------------------------------------------------------
class TestGenotypeValue:
    def test_lists_normalised_to_tuples(self):
        g = Genotype.from_dict(_valid_dict())
        assert isinstance(g.encoder, tuple) and isinstance(g.hnu, tuple)
        assert all(isinstance(u, tuple) for u in g.hnu)
        assert isinstance(g.channels, tuple)

    def test_hashable_and_equal(self):
        a = Genotype.from_dict(_valid_dict())
        b = Genotype.from_dict(_valid_dict())
        assert a == b and hash(a) == hash(b)
        assert a == NAMED_GENOTYPES["hbl-lol-2022"]
        assert a != NAMED_GENOTYPES["conv3x3"]

    def test_frozen(self):
        with pytest.raises(Exception):
            NAMED_GENOTYPES["conv3x3"].units = 3  # type: ignore[misc]

    def test_defaults_when_optional_keys_absent(self):
        d = _valid_dict()
        for k in ("space", "channels", "units"):
            del d[k]
        g = Genotype.from_dict(d)
        assert g.space == "paper" and g.channels == (16, 32) and g.units == 7

    def test_other_unit_count_is_allowed_when_consistent(self):
        d = _valid_dict()
        d["hnu"] = d["hnu"][:3]
        d["units"] = 3
        assert Genotype.from_dict(d).units == 3
        del d["units"]  # inferred from the list
        assert Genotype.from_dict(d).units == 3

    def test_other_channels(self):
        d = _valid_dict()
        d["channels"] = [8, 12]
        assert Genotype.from_dict(d).channels == (8, 12)


# ---------------------------------------------------------------------------------------------
# JSON io
# ---------------------------------------------------------------------------------------------
class TestJsonIo:
    @pytest.mark.parametrize("name", sorted(NAMED_GENOTYPES))
    def test_round_trip_file(self, tmp_path, name):
        g = NAMED_GENOTYPES[name]
        path = g.save(tmp_path / "sub" / "dir" / "arch.json")
        assert path == tmp_path / "sub" / "dir" / "arch.json"
        assert load_genotype(path) == g
        assert load_genotype(str(path)) == g
        assert [p.name for p in path.parent.iterdir()] == ["arch.json"]  # no .tmp left behind

    def test_round_trip_directory(self, tmp_path):
        g = NAMED_GENOTYPES["hbl-lol-2022"]
        g.save(tmp_path / "genotype.json")
        assert load_genotype(tmp_path) == g
        assert load_genotype(str(tmp_path)) == g

    def test_on_disk_format(self, tmp_path):
        path = NAMED_GENOTYPES["hbl-lol-2022"].save(tmp_path / "genotype.json")
        text = path.read_text()
        assert text.endswith("\n")
        data = json.loads(text)
        assert list(data) == KEYS
        assert data["format"] == "hbl-genotype/1"
        assert data["space"] == "paper"
        assert data["channels"] == [16, 32]
        assert data["units"] == 7
        assert data["encoder"] == HBL_LOL_2022["encoder"]
        assert data["decoder"] == HBL_LOL_2022["decoder"]
        assert data["hnu"] == HBL_LOL_2022["hnu"]
        assert data == _valid_dict()

    def test_to_dict_is_plain_json(self):
        d = NAMED_GENOTYPES["conv3x3"].to_dict()
        assert list(d) == KEYS
        assert isinstance(d["channels"], list) and isinstance(d["hnu"][0], list)
        assert json.loads(json.dumps(d)) == d

    def test_save_overwrites(self, tmp_path):
        p = tmp_path / "genotype.json"
        NAMED_GENOTYPES["conv3x3"].save(p)
        NAMED_GENOTYPES["hbl-lol-2022"].save(p)
        assert load_genotype(p) == NAMED_GENOTYPES["hbl-lol-2022"]

    def test_load_accepts_genotype_and_names(self):
        g = NAMED_GENOTYPES["conv3x3"]
        assert load_genotype(g) is g
        assert load_genotype("conv3x3") is g
        assert load_genotype(Path("hbl-lol-2022")) is NAMED_GENOTYPES["hbl-lol-2022"]

    def test_hand_written_file(self, tmp_path):
        p = _write(tmp_path, json.dumps(_valid_dict(), indent=4))
        assert load_genotype(p) == NAMED_GENOTYPES["hbl-lol-2022"]


# ---------------------------------------------------------------------------------------------
# Error paths: one-line GenotypeError naming the problem
# ---------------------------------------------------------------------------------------------
def _set(key, value):
    def f(d):
        d[key] = value
    return f


def _del(key):
    def f(d):
        del d[key]
    return f


def _set_edge(group, i, value):
    def f(d):
        d[group][i] = value
    return f


def _set_hnu(u, i, value):
    def f(d):
        d["hnu"][u][i] = value
    return f


PAPER_HNU_LIST = ", ".join(SPACES["paper"].hnu)
PAPER_FCM_LIST = ", ".join(SPACES["paper"].fcm)

ERROR_CASES = [
    # unknown op (the message lists the ops allowed on that edge)
    ("unknown-op-encoder", _set_edge("encoder", 2, "conv_7x7"),
     [r"'encoder'\[2\] is 'conv_7x7'", re.escape(PAPER_FCM_LIST)]),
    ("hnu-op-on-encoder", _set_edge("encoder", 0, "skip_connect"),
     [r"'encoder'\[0\] is 'skip_connect'", re.escape(PAPER_FCM_LIST)]),
    ("unknown-op-decoder", _set_edge("decoder", 8, "resconv_3x3"),
     [r"'decoder'\[8\] is 'resconv_3x3'", re.escape(PAPER_FCM_LIST)]),
    ("unknown-op-hnu", _set_hnu(3, 5, "sep_conv_3x3"),
     [r"'hnu\[3\]'\[5\] is 'sep_conv_3x3'", re.escape(PAPER_HNU_LIST)]),
    ("fcm-op-on-hnu", _set_hnu(0, 0, "conv_5x5"), [r"'hnu\[0\]'\[0\] is 'conv_5x5'"]),
    # wrong edge counts
    ("encoder-short", lambda d: d["encoder"].pop(), [r"'encoder' has 8 edges, expected 9"]),
    ("encoder-long", lambda d: d["encoder"].append("conv_3x3"), [r"'encoder' has 10 edges, expected 9"]),
    ("decoder-short", lambda d: d["decoder"].pop(), [r"'decoder' has 8 edges, expected 9"]),
    ("decoder-empty", _set("decoder", []), [r"'decoder' has 0 edges, expected 9"]),
    ("hnu-unit-short", lambda d: d["hnu"][2].pop(), [r"'hnu\[2\]' has 7 edges, expected 8"]),
    ("hnu-unit-long", lambda d: d["hnu"][6].append(S), [r"'hnu\[6\]' has 9 edges, expected 8"]),
    # wrong number of units
    ("units-mismatch-fewer", lambda d: d["hnu"].pop(), [r"'hnu' has 6 units but 'units' says 7"]),
    ("units-mismatch-more", lambda d: d["hnu"].append([S] * 8), [r"'hnu' has 8 units but 'units' says 7"]),
    ("units-zero", _set("units", 0), [r"'units' must be a positive integer, got 0"]),
    ("units-string", _set("units", "7"), [r"'units' must be a positive integer, got '7'"]),
    ("units-bool", _set("units", True), [r"'units' must be a positive integer"]),
    ("units-null", _set("units", None), [r"'units' must be a positive integer"]),
    ("no-units-at-all", lambda d: (d.__setitem__("hnu", []), d.pop("units")), [r"'units' must be a positive integer, got 0"]),
    # format
    ("unknown-format", _set("format", "hbl-genotype/3"),
     [r"unknown genotype format 'hbl-genotype/3'", re.escape("'hbl-genotype/1' or 'hbl-genotype/2'")]),
    ("v2-without-macro", _set("format", "hbl-genotype/2"),
     [r"format 'hbl-genotype/2' needs a 'macro' section", re.escape("write 'hbl-genotype/1' for the paper network")]),
    ("v1-with-macro", _set("macro", {"scale": 4}), [r"a 'macro' section needs format 'hbl-genotype/2'"]),
    ("format-null", _set("format", None), [r"unknown genotype format None"]),
    ("missing-format", _del("format"), [r"missing 'format'", re.escape("'hbl-genotype/1'")]),
    # keys
    ("missing-encoder", _del("encoder"), [r"missing key\(s\) encoder"]),
    ("missing-hnu", _del("hnu"), [r"missing key\(s\) hnu"]),
    ("unknown-key", _set("alpha", [1, 2]), [r"unknown key\(s\) alpha", r"allowed: .*encoder"]),
    # non-list fields
    ("encoder-string", _set("encoder", "conv_3x3"), [r"'encoder' must be a list of op names"]),
    ("decoder-dict", _set("decoder", {"a": 1}), [r"'decoder' must be a list of op names"]),
    ("encoder-non-string-op", _set_edge("encoder", 0, 3), [r"'encoder' must be a list of op names"]),
    ("hnu-string", _set("hnu", "skip_connect"), [r"'hnu' must be a list of lists of op names"]),
    ("hnu-list-of-strings", _set("hnu", [S] * 7), [r"'hnu' must be a list of lists of op names"]),
    ("hnu-unit-non-string-op", _set_hnu(1, 1, None), [r"'hnu\[1\]' must be a list of op names"]),
    # space
    ("unknown-space", _set("space", "mobile"), [r"unknown search space 'mobile'", r"paper"]),
    # channels
    ("channels-one", _set("channels", [16]), [r"'channels' must be two positive integers \[C1, C2\], got \[16\]"]),
    ("channels-three", _set("channels", [16, 32, 64]), [r"'channels' must be two positive integers"]),
    ("channels-zero", _set("channels", [0, 32]), [r"'channels' must be two positive integers"]),
    ("channels-negative", _set("channels", [16, -1]), [r"'channels' must be two positive integers"]),
    ("channels-float", _set("channels", [16.5, 32]), [r"'channels' must be two positive integers"]),
    ("channels-bool", _set("channels", [True, 32]), [r"'channels' must be two positive integers"]),
    ("channels-strings", _set("channels", ["16", "32"]), [r"'channels' must be two positive integers"]),
]


@pytest.mark.parametrize("mutate,patterns", [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_invalid_file_raises_one_line_genotype_error(tmp_path, mutate, patterns):
    d = _valid_dict()
    mutate(d)
    path = _write(tmp_path, d)
    with pytest.raises(GenotypeError) as info:
        load_genotype(path)
    msg = _one_line_error(info)
    assert msg.startswith(f"{path}: "), msg  # names the file
    for pat in patterns:
        assert re.search(pat, msg), (pat, msg)


@pytest.mark.parametrize("mutate,patterns", [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_invalid_dict_raises_one_line_genotype_error(mutate, patterns):
    d = _valid_dict()
    mutate(d)
    with pytest.raises(GenotypeError) as info:
        Genotype.from_dict(d, source="mine")
    msg = _one_line_error(info)
    assert msg.startswith("mine: ")
    for pat in patterns:
        assert re.search(pat, msg), (pat, msg)


@pytest.mark.parametrize("mutate", [_set("encoder", "conv_3x3"), _set_hnu(1, 1, None)], ids=["encoder", "hnu-unit"])
def test_source_named_once(mutate):
    d = _valid_dict()
    mutate(d)
    with pytest.raises(GenotypeError) as info:
        Genotype.from_dict(d, source="mine")
    assert str(info.value).count("mine") == 1, str(info.value)


@pytest.mark.parametrize("value", [16, None], ids=["int", "null"])
def test_non_list_channels_is_a_genotype_error(tmp_path, value):
    d = _valid_dict()
    d["channels"] = value
    with pytest.raises(GenotypeError, match="'channels' must be two positive integers"):
        load_genotype(_write(tmp_path, d))


@pytest.mark.parametrize("value", [["paper"], {"name": "paper"}], ids=["list", "object"])
def test_non_string_space_is_a_genotype_error(tmp_path, value):
    d = _valid_dict()
    d["space"] = value
    with pytest.raises(GenotypeError, match="search space"):
        load_genotype(_write(tmp_path, d))


class TestLoadErrors:
    @pytest.mark.parametrize(
        "text,line,col",
        [
            ('{"format": "hbl-genotype/1",\n  "space": }\n', 2, 12),
            ("", 1, 1),
            ('{"format": "hbl-genotype/1", "units": 7,}', 1, 41),
        ],
        ids=["missing-value", "empty", "trailing-comma"],
    )
    def test_malformed_json_reports_line_and_column(self, tmp_path, text, line, col):
        path = _write(tmp_path, text)
        with pytest.raises(GenotypeError) as info:
            load_genotype(path)
        msg = _one_line_error(info)
        assert str(path) in msg
        assert f"malformed JSON at line {line} column {col}" in msg, msg

    @pytest.mark.parametrize("payload,kind", [("[1, 2]", "list"), ('"conv3x3"', "str"), ("7", "int"), ("null", "NoneType")])
    def test_not_an_object(self, tmp_path, payload, kind):
        path = _write(tmp_path, payload)
        with pytest.raises(GenotypeError) as info:
            load_genotype(path)
        assert f"expected a JSON object, got {kind}" in _one_line_error(info)

    def test_nonexistent_path(self, tmp_path):
        missing = tmp_path / "nope" / "genotype.json"
        with pytest.raises(GenotypeError) as info:
            load_genotype(missing)
        msg = _one_line_error(info)
        assert str(missing) in msg
        assert "neither a built-in name" in msg and "nor an existing file" in msg
        for name in NAMED_GENOTYPES:
            assert name in msg

    def test_unknown_name(self):
        with pytest.raises(GenotypeError) as info:
            load_genotype("hbl-lol-2099")
        msg = _one_line_error(info)
        assert "'hbl-lol-2099'" in msg and "hbl-lol-2022" in msg and "conv3x3" in msg

    def test_directory_without_genotype_json(self, tmp_path):
        (tmp_path / "other.json").write_text("{}")
        with pytest.raises(GenotypeError) as info:
            load_genotype(tmp_path)
        msg = _one_line_error(info)
        assert str(tmp_path) in msg and "without genotype.json" in msg

    def test_non_utf8_file(self, tmp_path):
        path = tmp_path / "genotype.json"
        path.write_bytes(b"\xff\xfe\x00\x80garbage")
        with pytest.raises(GenotypeError) as info:
            load_genotype(path)
        assert str(path) in _one_line_error(info)


class TestDirectConstruction:
    def _kw(self, **over):
        kw = dict(encoder=HBL_LOL_2022["encoder"], decoder=HBL_LOL_2022["decoder"], hnu=HBL_LOL_2022["hnu"])
        kw.update(over)
        return kw

    @pytest.mark.parametrize(
        "over,pattern",
        [
            (dict(encoder=["conv_3x3"] * 8), r"'encoder' has 8 edges, expected 9"),
            (dict(decoder=["conv_3x3"] * 8 + ["zzz"]), r"'decoder'\[8\] is 'zzz'"),
            (dict(hnu=HBL_LOL_2022["hnu"][:6]), r"'hnu' has 6 units but 'units' says 7"),
            (dict(format="hbl-genotype/0"), r"unknown genotype format 'hbl-genotype/0'"),
            (dict(space="nope"), r"unknown search space 'nope'"),
            (dict(channels=(16,)), r"'channels' must be two positive integers"),
            (dict(units=-1), r"'units' must be a positive integer"),
        ],
    )
    def test_validated_on_construction(self, over, pattern):
        with pytest.raises(GenotypeError, match=pattern) as info:
            Genotype(**self._kw(**over))
        _one_line_error(info)

    def test_valid(self):
        assert Genotype(**self._kw()) == NAMED_GENOTYPES["hbl-lol-2022"]


# ---------------------------------------------------------------------------------------------
# summary()
# ---------------------------------------------------------------------------------------------
class TestSummary:
    def _parse(self, text: str) -> list[tuple[str, int]]:
        out = []
        for tok in text.split(" "):
            op, n = tok.split("×")
            out.append((op, int(n)))
        return out

    def test_conv3x3(self):
        assert NAMED_GENOTYPES["conv3x3"].summary() == "conv_3x3×74"

    def test_hbl_lol_2022_counts(self):
        text = NAMED_GENOTYPES["hbl-lol-2022"].summary()
        assert "\n" not in text
        items = self._parse(text)
        expected = Counter(HBL_LOL_2022["encoder"] + HBL_LOL_2022["decoder"] + [o for u in HBL_LOL_2022["hnu"] for o in u])
        assert dict(items) == dict(expected)
        assert len(items) == len(expected)  # each op once
        assert sum(n for _, n in items) == 9 + 9 + 7 * 8
        counts = [n for _, n in items]
        assert counts == sorted(counts, reverse=True)  # most frequent first
        assert items[0] == ("skip_connect", 19)


# ---------------------------------------------------------------------------------------------
# hbl-genotype/2: the edge macro-architecture
# ---------------------------------------------------------------------------------------------
MACRO = {"scale": 4, "model": "retinex", "map_channels": 1, "upsample": "guided", "floor": 0.01,
         "radius": 2, "eps": 0.001, "refine": ["sepconv_3x3", "conv_3x3"], "refine_channels": 6}


def _v2_dict(**macro) -> dict:
    d = _valid_dict()
    d["format"] = "hbl-genotype/2"
    d["macro"] = {**MACRO, **macro}
    return d


class TestGenotypeV2:
    def test_round_trip_file_keeps_every_field(self, tmp_path):
        g = Genotype.from_dict(_v2_dict())
        assert g.format == FORMAT_V2 and g.is_edge
        assert g.macro == Macro(scale=4, model="retinex", map_channels=1, upsample="guided", floor=0.01, radius=2,
                                eps=0.001, refine=("sepconv_3x3", "conv_3x3"), refine_channels=6)
        path = g.save(tmp_path / "genotype.json")
        data = json.loads(path.read_text())
        assert list(data) == KEYS + ["macro"] and data["macro"] == MACRO
        assert load_genotype(path) == g

    def test_v1_file_reads_unchanged(self, tmp_path):
        path = _write(tmp_path, _valid_dict())
        g = load_genotype(path)
        assert g.format == FORMAT and g.macro is None and not g.is_edge
        assert json.loads(g.save(tmp_path / "again.json").read_text()) == _valid_dict()

    def test_format_follows_the_content(self):
        kw = dict(encoder=HBL_LOL_2022["encoder"], decoder=HBL_LOL_2022["decoder"], hnu=HBL_LOL_2022["hnu"])
        assert Genotype(**kw).format == FORMAT
        assert Genotype(**kw, macro=MACRO).format == FORMAT_V2  # a dict is accepted and validated
        assert Genotype(**kw, macro=MACRO).macro.refine == ("sepconv_3x3", "conv_3x3")

    def test_optional_macro_keys_take_their_documented_defaults(self):
        d = _v2_dict()
        for k in ("radius", "eps", "refine", "refine_channels"):
            del d["macro"][k]
        m = Genotype.from_dict(d).macro
        assert (m.radius, m.eps, m.refine, m.refine_channels) == (1, 0.01, (), 8)

    def test_int_and_float_floor_are_the_same_genotype(self):
        a, b = Genotype.from_dict(_v2_dict(floor=0.5)), Genotype.from_dict(_v2_dict(eps=1))
        assert a == Genotype.from_dict(_v2_dict(floor=0.5)) and hash(b) == hash(Genotype.from_dict(_v2_dict(eps=1.0)))

    def test_out_channels(self):
        assert Macro(scale=2, model="retinex", map_channels=3, upsample="bilinear", floor=0.1).out_channels == 3
        assert Macro(scale=2, model="scattering", map_channels=1, upsample="bilinear", floor=0.1).out_channels == 4

    def test_summary_names_the_macro_choices(self):
        text = Genotype.from_dict(_v2_dict()).summary()
        assert text.startswith("edge s4 retinex L1 guided(r2) refine:sepconv_3x3+conv_3x3@6 16/32×7 | ")
        assert "[" not in text  # rich would read brackets as markup
        assert NAMED_GENOTYPES["edge-uw-s4"].summary().startswith("edge s4 scattering t3 guided(r1) refine:none 8/16×2")

    @pytest.mark.parametrize("name", ["edge-lol-s8", "edge-lol-s4", "edge-lol-s4-paper", "edge-haze-s4", "edge-uw-s4",
                                      "edge-uw-s4-box5"])
    def test_named_edge_genotypes(self, name):
        g = NAMED_GENOTYPES[name]
        assert g.format == FORMAT_V2 and g.macro.upsample == "guided"
        assert g.macro.model == ("retinex" if "lol" in name else "scattering")
        assert g.macro.map_channels == (3 if name.startswith("edge-uw-s4") else 1)
        assert g.macro.scale == (8 if name.endswith("s8") else 4)
        assert g.macro.refine == (("boxmix_5x5",) if name.endswith("box5") else ())

    def test_edge_genotype_helper(self):
        g = edge_genotype(scale=2, model="scattering", channels=(4, 8), units=3, refine=("conv_1x1",))
        assert g.units == 3 and len(g.hnu) == 3 and g.macro.floor == 0.05 and g.macro.refine == ("conv_1x1",)
        assert edge_genotype(scale=2, model="retinex").macro.floor == 0.01


MACRO_ERRORS = [
    ("scale", dict(scale=3), r"'macro.scale' must be one of 1, 2, 4, 8, got 3"),
    ("scale-bool", dict(scale=True), r"'macro.scale' must be one of"),
    ("model", dict(model="haze"), r"'macro.model' must be one of retinex, scattering, got 'haze'"),
    ("map-channels", dict(map_channels=2), r"'macro.map_channels' must be 1 or 3, got 2"),
    ("upsample", dict(upsample="bicubic"), r"'macro.upsample' must be one of bilinear, guided, learned, got 'bicubic'"),
    ("floor-zero", dict(floor=0), r"'macro.floor' must be a number in \(0, 1\), got 0"),
    ("floor-string", dict(floor="0.1"), r"'macro.floor' must be a number in \(0, 1\)"),
    ("floor-nan", dict(floor=float("nan")), r"'macro.floor' must be a number"),
    ("radius", dict(radius=0), r"'macro.radius' must be an integer in 1..8, got 0"),
    ("eps", dict(eps=-1e-3), r"'macro.eps' must be a positive number"),
    ("refine-op", dict(refine=["skip_connect"]), r"'macro.refine'\[0\] is 'skip_connect'; allowed: conv_1x1"),
    ("refine-string", dict(refine="conv_3x3"), r"'macro.refine' must be a list of op names"),
    ("refine-long", dict(refine=["conv_3x3"] * 5), r"'macro.refine' has 5 ops, at most 4"),
    ("refine-width", dict(refine_channels=0), r"'macro.refine_channels' must be an integer in 1..64"),
    ("unknown-key", dict(guide="x"), r"unknown key\(s\) macro.guide; allowed: scale, model"),
]


@pytest.mark.parametrize("over,pattern", [c[1:] for c in MACRO_ERRORS], ids=[c[0] for c in MACRO_ERRORS])
def test_invalid_macro_is_a_one_line_error_naming_the_file(tmp_path, over, pattern):
    path = _write(tmp_path, _v2_dict(**over))
    with pytest.raises(GenotypeError) as info:
        load_genotype(path)
    msg = _one_line_error(info)
    assert msg.startswith(f"{path}: ") and re.search(pattern, msg), msg


@pytest.mark.parametrize("key", ["scale", "model", "map_channels", "upsample", "floor"])
def test_missing_required_macro_key(key):
    d = _v2_dict()
    del d["macro"][key]
    with pytest.raises(GenotypeError, match=rf"missing key\(s\) macro.{key}"):
        Genotype.from_dict(d)


def test_macro_not_an_object():
    d = _v2_dict()
    d["macro"] = [4]
    with pytest.raises(GenotypeError, match="'macro' must be a JSON object, got list"):
        Genotype.from_dict(d)
