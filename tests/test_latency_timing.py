"""The profiler's timing: block order, one live session, noisy re-timing, in-context marginals (fake clock)."""

from __future__ import annotations

import pytest
import torch

from hbl_edge.ops import get_space
from hbl_edge.search import profiler, timing
from hbl_edge.search.latency import LatencyModel, edge_positions, random_genotype
from hbl_edge.search.op_graphs import OpChain, entry_graphs, op_module


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance_ms(self, ms: float) -> None:
        self.now += ms / 1e3


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(timing, "clock", c)
    return c


def test_blocks_consecutive_alternating_rounds_one_live_session(clock):
    log: list[tuple[str, str]] = []
    live: set[str] = set()

    def block(name: str, ms: float) -> timing.Block:
        def open_():
            assert not live, f"{name} opened while {live} still alive"
            live.add(name)
            log.append(("open", name))

            def run():
                log.append(("run", name))
                clock.advance_ms(ms)

            return run

        def close_():
            live.discard(name)
            log.append(("close", name))

        return timing.Block(open_, close_)

    got = timing.time_blocks({"a": block("a", 2.0), "b": block("b", 5.0)}, lambda: None, warmup=2, repeats=3, rounds=2)
    assert got["a"].rounds == [pytest.approx([2.0] * 3)] * 2 and got["b"].rounds == [pytest.approx([5.0] * 3)] * 2
    per = ["open"] + ["run"] * 5 + ["close"]  # warm-up and timed runs of a block follow each other
    want = [(w, n) for n in ("a", "b", "b", "a") for w in per]  # round 2 runs in reverse
    assert log == want


def test_noisy_graph_retimed_then_flagged(clock):
    def block(name: str, times) -> timing.Block:
        it = iter(times)

        def run():
            clock.advance_ms(next(it))

        return timing.Block(lambda: run)

    steady = block("steady", [1.0] * 100)
    burst = block("burst", [1.0, 3.0, 1.0, 3.0] + [1.0] * 100)  # a burst in its first round only
    wild = block("wild", [1.0, 4.0] * 100)  # never settles
    blocks = {"steady": steady, "burst": burst, "wild": wild}
    got = timing.time_blocks(blocks, lambda: None, warmup=0, repeats=4, rounds=1)
    assert timing.relative_spread(got["burst"].all) > timing.NOISY_SPREAD
    left = timing.retime_noisy(blocks, got, lambda: None, warmup=0, repeats=4, retries=2)
    assert left == {"wild"}
    assert len(got["steady"].rounds) == 1  # a steady graph is not timed again
    assert len(got["burst"].rounds) == 3 and timing.median(got["burst"].all) == pytest.approx(1.0)
    assert len(got["wild"].rounds) == 3


def _unit_ms(module: torch.nn.Module) -> float:
    """A made-up cost per op module, distinct per op and size (parameters and input channels)."""
    return 0.01 + 1e-4 * sum(p.numel() for p in module.parameters())


class FakeHarness:
    """Costs: a chain of k ops = k·unit + call; an op alone = unit + call; fixed parts 0.3 + call."""

    subtract_overhead = True
    CALL = 0.05

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.opened = 0

    def versions(self):
        return {"fake": "1"}

    def sync(self):
        pass

    def close(self):
        pass

    def prepare(self, graph, gen):
        m = graph.module
        if isinstance(m, OpChain):
            ms = sum(_unit_ms(op) for op in m.ops) + self.CALL
        elif graph.shapes == [(1, 1, 1, 1)]:
            ms = self.CALL
        elif any(p.dim() == 4 for p in m.parameters()) and type(m).__name__ not in ("Conv2d", "AddUp"):
            ms = _unit_ms(m) + self.CALL  # an op alone (head / tail)
        else:
            ms = 0.3 + self.CALL

        def open_():
            self.opened += 1
            return lambda: self.clock.advance_ms(ms)

        return timing.Block(open_)


def test_profile_takes_marginal_in_context_costs(clock, monkeypatch):
    fake = FakeHarness(clock)
    monkeypatch.setattr(profiler, "make_harness", lambda *a, **k: fake)
    res, ch = (40, 24), (4, 8)
    table = profiler.profile("cpu", "onnxruntime", res, channels=ch, units=2, repeats=3, warmup=1, rounds=2, chain=4)
    assert table.settings["call_overhead_ms"] == pytest.approx(FakeHarness.CALL)
    assert table.settings["noisy"] == 0
    graphs = entry_graphs("paper", ch, res, 4)
    by = {(e["op"], e["c_in"], e["c_out"], e["height"], e["width"], e["variant"]): e for e in table.entries}
    assert set(by) == set(graphs)
    for key, e in by.items():
        chain = graphs[key].graphs.get("chainK")
        if chain is not None:  # (T_4 − T_1)/3 of made-up costs: the mean unit cost of the 2nd..4th block
            want = sum(_unit_ms(op) for op in chain.module.ops[1:]) / 3
            assert e["method"] == "chain4" and e["chain_ms"][0] == pytest.approx(_unit_ms(chain.module.ops[0]) + FakeHarness.CALL)
        else:  # alone, less the empty call
            want = _unit_ms(graphs[key].graphs["alone"].module)
            assert e["method"] == "alone"
        assert e["ms"] == pytest.approx(want), key
    fixed = {f["name"]: f["ms"] for f in table.fixed}
    assert fixed["io"] == pytest.approx(0.3 + FakeHarness.CALL)  # a deployed call: the call itself counts
    assert fixed["down1"] == pytest.approx(0.3) and fixed["hnu_merge"] == pytest.approx(0.3)
    # every graph opened once per round (no noisy re-timing with a steady fake clock)
    n_graphs = sum(len(g.graphs) for g in graphs.values()) + len(table.fixed) + 1
    assert fake.opened == 2 * n_graphs
    # the model's prediction is the sum over the genotype's edges of these in-context costs
    g = random_genotype(channels=ch, units=2, seed=5)
    pos = edge_positions(ch, res)
    want = sum(by[(op, *pos["encoder"][i].key)]["ms"] for i, op in enumerate(g.encoder))
    want += sum(by[(op, *pos["decoder"][i].key)]["ms"] for i, op in enumerate(g.decoder))
    want += sum(by[(op, *pos["hnu"][i].key)]["ms"] for u in g.hnu for i, op in enumerate(u))
    want += table.fixed_ms(2)
    assert LatencyModel(table).predict(g) == pytest.approx(want)


def test_entry_graphs_are_ops_in_context():
    graphs = entry_graphs("paper", (4, 8), (40, 24), chain=3)
    sp = get_space("paper")
    assert len(graphs) == 4 * len(sp.fcm) + len(sp.hnu)
    g = graphs[("conv_3x3", 8, 8, 6, 10, "bn_folded")]
    assert set(g.graphs) == {"chain1", "chainK"} and g.folded is True
    chain = g.graphs["chainK"].module
    assert len(chain.ops) == 3 and g.graphs["chain1"].module.ops[0] is chain.ops[0]
    x = torch.randn(1, 8, 6, 10)
    with torch.no_grad():  # x → op → ReLU, three times
        y = x
        for op in chain.ops:
            y = torch.relu(op(y))
        assert torch.equal(chain(x), y)
    head = graphs[("conv_5x5", 3, 4, 24, 40, "plain")]
    assert set(head.graphs) == {"alone"} and head.graphs["alone"].shapes == [(1, 3, 24, 40)]
    m, folded = op_module("skip_connect", edge_positions((4, 8), (40, 24))["hnu"][0])
    assert folded is True and type(m).__name__ == "ChannelAffine"  # skip + BN folds to a per-channel affine
