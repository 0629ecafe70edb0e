"""How stage A turns the trained supernet into ops: the argmax of α, or the perturbation test.

``argmax`` (DARTS, the reference code): each edge keeps the op with the largest softmax(α).
Measured here (docs/search.md, "How decided is α?"): after the full stage A at the default
learning rate α has moved by 0.1–0.2 of a logit and an edge's best op leads its runner-up by
a softmax margin of about 2·10⁻⁴, so the argmax is decided by whatever pushes every edge the
same way (the latency term), not by what an op contributes. A larger α learning rate makes α
decisive, and it then settles on the cheapest ops (``conv_1x1``, ``resconv_1x1``) on nearly
every edge.

``perturbation`` (Wang et al., *Rethinking Architecture Selection in Differentiable NAS*,
ICLR 2021, "DARTS-PT"): an op's worth is what the trained supernet loses without it. For every
edge e and op o, o is removed from e's mixture (its logit to −∞, the others renormalised by
the softmax) and the λ*-weighted loss on fixed validation batches is measured; the score is
that loss minus the whole supernet's. The op whose removal costs most is kept. Here it is one
pass over the edges without the paper's fine-tuning between decisions: the supernets are small
and the pass costs a few hundred forwards. The scores become the logits the derivation and the
repair read (:func:`selection_logits`: the collapse guard and the repair's α-weight per
millisecond then price what removing an op costs in validation loss), so the latency budget
is kept by the repair exactly as for ``argmax``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from .supernet import Supernet

#: Registered selections (``SearchConfig.selection``, ``--selection``).
SELECTIONS = ("argmax", "perturbation")
_REMOVED = -1e9  # softmax weight exactly 0 in float32 and float64, the others renormalised
_NAMES = ("alpha_encoder", "alpha_decoder", "alpha_hnu")  # net.arch_parameters()'s order


@torch.no_grad()
def perturbation_scores(net: Supernet, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                        batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, list[torch.Tensor]]:
    """Validation loss of ``net`` and, per α entry, the loss increase when that op is removed.

    Returns ``(base_loss, scores)`` with ``scores[i]`` shaped like ``net.arch_parameters()[i]``.
    BatchNorm uses batch statistics (removing an op moves the activations' distribution; the
    running statistics were gathered with every op in), and every buffer is restored, so the
    supernet is left exactly as it was.
    """
    alphas = net.arch_parameters()
    buffers = [b.detach().clone() for b in net.buffers()]
    training = net.training
    net.train()

    def loss() -> float:
        return sum(float(loss_fn(net(x), y)) for x, y in batches) / len(batches)

    try:
        base = loss()
        scores = []
        for a in alphas:
            flat = a.data.view(-1, a.shape[-1])
            score = torch.zeros_like(flat)
            for e in range(flat.shape[0]):
                for o in range(flat.shape[1]):
                    kept = flat[e, o].item()
                    flat[e, o] = _REMOVED
                    score[e, o] = loss() - base
                    flat[e, o] = kept
            scores.append(score.view_as(a))
    finally:
        for b, saved in zip(net.buffers(), buffers):
            b.copy_(saved)
        net.train(training)
    return base, scores


def selection_logits(scores: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Scores as logits: divided by their standard deviation over every edge, so that one
    softmax scale serves the derivation's margins and the repair's prices on every edge."""
    flat = torch.cat([s.reshape(-1) for s in scores])
    scale = float(flat.std()) or 1.0
    return [s / scale for s in scores]


def select(net: Supernet, derive_fn: Callable[..., Any], max_parameter_free: int | None, selection: str,
           loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
           batches: Sequence[tuple[torch.Tensor, torch.Tensor]] = ()) -> tuple[Any, Any, Any, dict[str, Any]]:
    """The derived genotype of ``net`` by ``selection``.

    Returns ``(genotype, derivation report, logits for the repair, record)``: the logits, keyed
    as :func:`hbl_edge.search.repair.repair` reads them, are α for ``argmax`` and the selection
    logits for ``perturbation``; the record says what was measured (for ``perturbation`` also
    the argmax genotype beside the selected one).
    """
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}, got {selection!r}")
    argmax, report = derive_fn(net, max_parameter_free)
    if selection == "argmax":
        return argmax, report, dict(zip(_NAMES, (a.detach() for a in net.arch_parameters()))), {"selection": "argmax"}
    if loss_fn is None or not batches:
        raise ValueError("the perturbation selection needs the loss and validation batches")
    base, scores = perturbation_scores(net, loss_fn, batches)
    logits = selection_logits(scores)
    saved = [a.detach().clone() for a in net.arch_parameters()]
    try:  # derive from the logits (the collapse guard reads them as it reads α), then put α back
        with torch.no_grad():
            for a, s in zip(net.arch_parameters(), logits):
                a.copy_(s.to(a.dtype))
        genotype, report = derive_fn(net, max_parameter_free)
    finally:
        with torch.no_grad():
            for a, s in zip(net.arch_parameters(), saved):
                a.copy_(s)
    record = {"selection": "perturbation", "base_loss": base, "batches": len(batches),
              "score_max": max(float(s.max()) for s in scores), "score_min": min(float(s.min()) for s in scores),
              "argmax_genotype": argmax.summary()}
    return genotype, report, dict(zip(_NAMES, logits)), record


__all__ = ["SELECTIONS", "perturbation_scores", "select", "selection_logits"]
