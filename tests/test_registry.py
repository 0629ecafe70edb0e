"""The name tables (ops, loss terms, baselines, objectives, latency forms, backends, devices) are
all one :class:`hbl_edge.registry.Registry`: one-time registration, one error-message style."""

from __future__ import annotations

import pytest

from hbl_edge.baselines import BASELINES, get_baseline
from hbl_edge.errors import ConfigError, GenotypeError, LossSpecError
from hbl_edge.losses import LOSS_TERMS, parse_loss_spec
from hbl_edge.ops import OPS, make_op
from hbl_edge.registry import Registry
from hbl_edge.runtime.runners import BACKENDS, BackendError, get_backend
from hbl_edge.search.devices import DEVICES, get_device
from hbl_edge.search.latency import OBJECTIVES as LATENCY_FORMS
from hbl_edge.search.objectives import OBJECTIVES, build_objective

LOOKUPS = [
    (OPS, lambda n: make_op(n, 4, 4), GenotypeError, "op"),
    (LOSS_TERMS, parse_loss_spec, LossSpecError, "loss term"),
    (BASELINES, get_baseline, ConfigError, "baseline"),
    (OBJECTIVES, build_objective, ConfigError, "objective"),
    (LATENCY_FORMS, LATENCY_FORMS.get, ConfigError, "latency form"),
    (BACKENDS, get_backend, BackendError, "backend"),
    (DEVICES, get_device, ConfigError, "device"),
]


@pytest.mark.parametrize("reg,lookup,error,what", LOOKUPS, ids=[w for *_, w in LOOKUPS])
def test_every_table_is_a_registry_with_one_message_style(reg, lookup, error, what):
    assert isinstance(reg, Registry) and reg.what == what
    with pytest.raises(error) as e:
        lookup("nosuchname")
    expected = f"unknown {what} 'nosuchname'; known: {', '.join(reg)}"
    assert str(e.value) == (f"{expected} ({reg.hint})" if reg.hint else expected)
    first = next(iter(reg))
    with pytest.raises(ValueError, match=f"^{what} '{first}' registered twice$"):
        reg.add(first, reg[first])
    assert dict(reg)[first] is reg.get(first) and len(reg) == len(list(reg))


def test_known_names_and_order_are_kept():
    assert list(BACKENDS) == ["ort", "torch", "trt", "trt-rtx"]
    assert list(LATENCY_FORMS) == ["additive", "multiplicative", "hinge"]
    assert list(OBJECTIVES) == ["critic", "fidelity"]
    assert list(DEVICES)[:2] == ["cpu", "cuda"]
    assert get_device("cpu").name == "cpu" and BASELINES["gamma"].name == "gamma"


def test_registry_is_a_read_only_mapping():
    reg: Registry[int] = Registry("thing")
    reg.add("a", 1)
    reg.register("b")(2)
    assert reg == {"a": 1, "b": 2} and reg != {"a": 1} and "a" in reg and "z" not in reg
    assert list(reg.keys()) == ["a", "b"] and sorted(reg.values()) == [1, 2]
    with pytest.raises(TypeError):
        reg["c"] = 3  # type: ignore[index]
    with pytest.raises(ConfigError, match="^unknown thing 'z'; known: a, b$"):
        reg["z"]
