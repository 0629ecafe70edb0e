"""Stage A's op selection (hbl_edge.search.selection): the perturbation test, exactly as defined."""

from __future__ import annotations

import pytest
import torch

from hbl_edge.search.selection import perturbation_scores, select, selection_logits
from hbl_edge.search.supernet import Supernet, derive


def _net_and_batches():
    torch.manual_seed(0)
    net = Supernet("paper", (4, 8), 1, seed=1).double().train()
    g = torch.Generator().manual_seed(3)
    batches = [(torch.rand(2, 3, 16, 16, generator=g, dtype=torch.float64),
                torch.rand(2, 3, 16, 16, generator=g, dtype=torch.float64)) for _ in range(2)]
    return net, batches


def _l1(p, t):
    return (p - t).abs().mean()


def test_a_score_is_the_loss_without_the_op_minus_the_loss_with_it_and_nothing_moves():
    net, batches = _net_and_batches()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    base, scores = perturbation_scores(net, _l1, batches)
    assert [s.shape for s in scores] == [a.shape for a in net.arch_parameters()]
    for k, v in net.state_dict().items():  # α, weights and BatchNorm statistics as they were
        assert torch.equal(v, state[k]), k
    # one entry by hand: the HNU's edge 3 without op 2 (its logit to -inf, the rest renormalised)
    with torch.no_grad():
        net.alpha_hnu[0, 3, 2] = float("-inf")
        by_hand = sum(float(_l1(net(x), y)) for x, y in batches) / 2
        net.alpha_hnu.copy_(state["alpha_hnu"])
    assert scores[2][0, 3, 2].item() == pytest.approx(by_hand - base, rel=1e-9, abs=1e-12)
    assert float(torch.cat([s.flatten() for s in scores]).abs().max()) > 0  # not vacuous


def test_select_derives_from_the_scores_and_leaves_alpha_alone():
    net, batches = _net_and_batches()
    alpha = [a.detach().clone() for a in net.arch_parameters()]
    g, report, priced, rec = select(net, derive, 4, "perturbation", _l1, batches)
    assert all(torch.equal(a, b) for a, b in zip(net.arch_parameters(), alpha))
    _, scores = perturbation_scores(net, _l1, batches)
    space = net.space
    assert list(g.encoder) == [space.fcm[i] for i in scores[0].argmax(-1).tolist()]
    assert set(priced) == {"alpha_encoder", "alpha_decoder", "alpha_hnu"} and rec["selection"] == "perturbation"
    logits = selection_logits(scores)
    assert float(torch.cat([s.flatten() for s in logits]).std()) == pytest.approx(1.0)
    g2, _, same, rec2 = select(net, derive, 4, "argmax")
    assert list(same) == ["alpha_encoder", "alpha_decoder", "alpha_hnu"]
    assert all(torch.equal(same[k], a) for k, a in zip(same, net.arch_parameters()))
    assert rec2 == {"selection": "argmax"} and g2 == derive(net, 4)[0]
    assert rec["argmax_genotype"] == g2.summary()
    with pytest.raises(ValueError, match="selection must be one of argmax, perturbation"):
        select(net, derive, 4, "random")
