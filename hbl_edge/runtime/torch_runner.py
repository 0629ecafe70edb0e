"""PyTorch runner: eager (optionally torch.compile'd) inference of a folded network."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class TorchRunner:
    """``run(batch N×3×H×W float32 numpy) -> N×3×H×W`` with BatchNorm folded (eval statistics)."""

    name = "torch"

    def __init__(self, model: nn.Module, device: str = "cpu", compile: bool = False) -> None:
        from ..network import fold_batchnorm  # the runtime reaches into the network only here

        self.device = torch.device(device)
        self.model = fold_batchnorm(model).to(self.device).eval()
        if compile:
            self.model = torch.compile(self.model, dynamic=True)

    @torch.inference_mode()
    def run(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
        return self.model(x).clamp_(0.0, 1.0).cpu().numpy()

    __call__ = run
