"""One stage-A search step: ours beside the authors' reference code, in interleaved processes.

The reference is the public repository zhudear/HBLALS_pytorch (Zhu et al., IJCAI 2022). It is
NOT part of this repository and is never copied into it: pass a scratch copy with
``--reference-dir PATH``, e.g.::

    git clone https://github.com/zhudear/HBLALS_pytorch /tmp/hblals_ref      # or any copy
    flock /tmp/hbl-timing.lock nice -n -10 python bench/reference_step.py --reference-dir /tmp/hblals_ref

What one step is, on both sides, with the same setup: the 16/32-channel supernet with 7 HNUs
(the paper space: 9 ops on HNU edges, 4 on encoder/decoder edges), batch 1, 128×128 crops
(the reference's ``setting.json``), SGD lr 5e-4 / momentum 0.9 / clip 5 for the weights, Adam
lr 5e-4 / betas (0.5, 0.999) / weight decay 1e-4 for α; one upper step (second order: the
virtual step, the upper loss at w', the finite-difference Hessian-vector product; first order:
the upper loss at w) followed by one lower step. Lower and upper loss are the same sum:

- ``weightfree``: l1 + l2 + color + ssim (every term at weight 1);
- ``perceptual``: the same plus vgg (VGG19 features) and lpips (AlexNet backbone, as the
  reference's ``lpips.LPIPS(net='alex')``), random weights from one file for both sides.

The reference side is the reference's own ``Network`` (model_search_architecture.py) and
``Architect`` (architect.py), driven by the same few lines as its train_search_architecture.py
loop (``architect.step(...)``, then zero_grad / search_loss / backward / clip / SGD step).
Shims, applied in memory in the reference's worker process only (nothing is written to its
folder), and why:

1. ``torch.Tensor.cuda`` and ``torch.nn.Module.cuda`` return ``self``: the reference calls
   ``.cuda()`` unconditionally and this machine has no GPU.
2. a stand-in ``torchvision`` module whose ``models.vgg19(pretrained=True).features`` is a
   VGG19 ``features`` stack with torchvision's layer layout and in-place ReLUs, loaded from the
   random weight file (torchvision is not installed here, and nothing may be downloaded);
   only used by the ``perceptual`` configuration.
3. a stand-in ``lpips`` module whose ``LPIPS(net='alex')`` is hbl-edge's AlexNet LPIPS (same
   layers, taps, normalisation, 1×1 heads and spatial mean as the lpips package), fed the
   reference's inputs as the package would treat them (as if in [−1, 1]) and returning N×1×1×1
   like the package; only for ``perceptual``.
4. ``Architect._backward_step`` (the first-order path) passes the VGG and LPIPS modules to
   ``search_loss``: the reference calls it without them and raises TypeError.

Processes: one worker process per (implementation, configuration, order), all started before
timing; after ``--warmup`` untimed steps each, ``--rounds`` rounds run one step in every worker
in turn, the start rotated each round, so load drifts hit both sides alike; the ratio
ours / reference is taken per round (paired) and its median reported. Memory: each worker
reports its resident-set size after setup and its high-water mark (VmHWM): the whole
process's peak, and the peak the steps add above the post-setup size (the mark is reset after
setup through ``/proc/self/clear_refs``).

Usage::

    python bench/reference_step.py --reference-dir /tmp/hblals_ref [--configs weightfree,perceptual]
        [--orders second,first] [--rounds 5] [--warmup 2] [--variants ours,...] [--out PATH]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import types
import warnings
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS: dict[str, tuple[str, ...]] = {
    "weightfree": ("l1", "l2", "color", "ssim"),
    "perceptual": ("l1", "l2", "color", "ssim", "vgg", "lpips"),
}
#: hbl-edge variants (name → Supernet / step options); "ours" is what `hbl-edge search` runs.
VARIANTS: dict[str, dict[str, Any]] = {
    "ours": {},
    "ours-candidate-bn": {"hnu_norm": "candidate"},
    "ours-unfused": {"fuse": False},
    "ours-candidate-bn-unfused": {"hnu_norm": "candidate", "fuse": False, "contiguous": True},
    "ours-contiguous": {"contiguous": True},
    "ours-compile": {"compile": True},
    "ours-lpips-vgg16": {"lpips_net": "vgg"},
    "ours-simultaneous": {"lower_step": "simultaneous"},
}
TASK = "lowlight"
CHANNELS, UNITS, CROP, BATCH = (16, 32), 7, 128, 1
LR, MOMENTUM, CLIP = 5e-4, 0.9, 5.0
N_BATCHES = 4


# ------------------------------------------------------------------------------------------
# machine state
# ------------------------------------------------------------------------------------------
def load_now() -> dict[str, Any]:
    out: dict[str, Any] = {"loadavg": list(os.getloadavg())}
    try:
        out["cpu_pressure"] = Path("/proc/pressure/cpu").read_text().strip().splitlines()
    except OSError:
        pass
    return out


def machine_info() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu_model": cpu, "logical_cpus": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


# ------------------------------------------------------------------------------------------
# weight files (random: only the cost matters) and data
# ------------------------------------------------------------------------------------------
def write_weight_files(folder: Path) -> dict[str, str]:
    """Random VGG19 and LPIPS (AlexNet and VGG16 backbones) weights in torchvision layouts."""
    import torch
    from safetensors.torch import save_file

    from hbl_edge import losses as L

    torch.manual_seed(0)

    def convs(seq) -> dict[str, torch.Tensor]:
        return {f"features.{i}.{k}": v.detach().clone() for i, m in enumerate(seq)
                if isinstance(m, torch.nn.Conv2d) for k, v in m.state_dict().items()}

    files = {"vgg": str(folder / "vgg19.safetensors")}
    save_file(convs(L._vgg_features(L.VGG19_CFG)), files["vgg"])
    for net in ("alex", "vgg"):
        b = L.LPIPS_BACKBONES.get(net)
        sd = convs(b.build(True))
        for k, c in enumerate(b.channels):
            sd[f"lin{k}.model.1.weight"] = torch.rand(1, c, 1, 1)
        files[f"lpips_{net}"] = str(folder / f"lpips_{net}.safetensors")
        save_file(sd, files[f"lpips_{net}"])
    return files


def batches(seed: int = 0):
    from hbl_edge.data import TrainSampler, open_dataset

    lo = TrainSampler(open_dataset("embedded", TASK, "train", seed=seed), TASK, crop=CROP, batch_size=BATCH, seed=seed + 1)
    up = TrainSampler(open_dataset("embedded", TASK, "val", seed=seed), TASK, crop=CROP, batch_size=BATCH, seed=seed + 7920)
    return [lo.batch(i) for i in range(N_BATCHES)], [up.batch(i) for i in range(N_BATCHES)]


# ------------------------------------------------------------------------------------------
# the reference side
# ------------------------------------------------------------------------------------------
SHIMS = (
    "torch.Tensor.cuda / torch.nn.Module.cuda return self (no GPU here)",
    "stand-in torchvision: models.vgg19(pretrained=True).features = VGG19 features (torchvision layout, "
    "in-place ReLU) from the random weight file (perceptual only)",
    "stand-in lpips: LPIPS(net='alex') = hbl-edge's AlexNet LPIPS on the package's [-1, 1] input "
    "convention, returning N×1×1×1 (perceptual only)",
    "Architect._backward_step (first order) passes the VGG/LPIPS modules search_loss needs "
    "(the reference omits them and raises TypeError)",
)


def _reference_shims(files: dict[str, str], perceptual: bool) -> None:
    import torch
    from torch import nn

    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    nn.Module.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    if not perceptual:
        return
    from hbl_edge import losses as L

    def vgg19(pretrained: bool = False, **_: Any):
        feats = L.load_vgg19_features(files["vgg"]).features
        for m in feats:
            if isinstance(m, nn.ReLU):
                m.inplace = True  # as torchvision's
        return types.SimpleNamespace(features=feats)

    tv = types.ModuleType("torchvision")
    tv.models = types.SimpleNamespace(vgg19=vgg19)  # type: ignore[attr-defined]
    sys.modules["torchvision"] = tv
    sys.modules["torchvision.models"] = tv.models  # type: ignore[assignment]

    class PackageLPIPS(nn.Module):
        def __init__(self, net: str = "alex", **_: Any) -> None:
            super().__init__()
            self.inner = L.load_lpips(files[f"lpips_{net}"], net)

        def forward(self, in0, in1, normalize: bool = False):
            if not normalize:  # the package takes [-1, 1]; ours takes [0, 1] and scales inside
                in0, in1 = (in0 + 1) / 2, (in1 + 1) / 2
            return self.inner(in0, in1).view(-1, 1, 1, 1)

    lp = types.ModuleType("lpips")
    lp.LPIPS = PackageLPIPS  # type: ignore[attr-defined]
    sys.modules["lpips"] = lp


def build_reference(ref_dir: str, config: str, order: str, files: dict[str, str]) -> Callable[[int], None]:
    import torch
    from torch import nn

    terms = CONFIGS[config]
    perceptual = "vgg" in terms
    warnings.filterwarnings("ignore")
    _reference_shims(files, perceptual)
    sys.path.insert(0, ref_dir)
    import architect as ref_architect  # noqa: E402  (the reference's modules)
    import model_search_architecture as ref_model  # noqa: E402

    def backward_step(self, input_valid, target_valid):  # shim 4
        loss = self.model.search_loss(self.model(input_valid), target_valid, *self._bench_losses)[0]
        loss.backward()

    ref_architect.Architect._backward_step = backward_step
    lower, upper = batches()
    torch.manual_seed(0)
    order_names = ("l1", "l2", "color", "ssim", "vgg", "lpips", "tv", "laplacian")
    lw = [1.0 if t in terms else 0.0 for t in order_names]
    model = ref_model.Network(lw)
    args = types.SimpleNamespace(momentum=MOMENTUM, weight_decay=3e-4, arch_learning_rate=5e-4, arch_weight_decay=1e-4)
    arch = ref_architect.Architect(model, args)
    optimizer = torch.optim.SGD(model.parameters(), LR, momentum=MOMENTUM)
    vgg_model = loss_fn = None
    if perceptual:
        import lpips  # the stand-in (shim 3)
        from losses.vgg import VGG19_Extractor2  # noqa: E402  (the reference's, on the stand-in torchvision)

        vgg_model = VGG19_Extractor2(output_layer_list=[1, 6, 11, 22]).eval().requires_grad_(False)
        loss_fn = lpips.LPIPS(net="alex").eval().requires_grad_(False)
    arch._bench_losses = (vgg_model, loss_fn)

    def step(i: int) -> None:  # the body of train_search_architecture.train()
        model.train()
        x, y = lower[i % N_BATCHES]
        xv, yv = upper[i % N_BATCHES]
        arch.step(x, y, xv, yv, [LR], vgg_model, loss_fn, optimizer, unrolled=(order == "second"))
        optimizer.zero_grad()
        loss = model.search_loss(model(x), y, vgg_model, loss_fn)[0]
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()

    return step


# ------------------------------------------------------------------------------------------
# our side: exactly what `hbl-edge search` runs per stage-A step
# ------------------------------------------------------------------------------------------
def build_ours(variant: str, config: str, order: str, files: dict[str, str]) -> Callable[[int], None]:
    import torch

    from hbl_edge.losses import build_loss
    from hbl_edge.search.config import SearchConfig
    from hbl_edge.search.stages import BilevelState, bilevel_step, make_optimizers, place, place_batch
    from hbl_edge.search.supernet import Supernet

    opts = dict(VARIANTS[variant])
    contiguous, compile_ = opts.pop("contiguous", False), opts.pop("compile", False)
    lpips_net = opts.pop("lpips_net", "alex")
    lower_step = opts.pop("lower_step", "alternating")
    terms = CONFIGS[config]
    lower, upper = batches()
    torch.manual_seed(0)
    net = Supernet("paper", CHANNELS, UNITS, seed=1, **opts).train()
    criterion = build_loss(",".join(f"{t}=1" for t in terms), vgg_weights=files.get("vgg"),
                           lpips_weights=files.get(f"lpips_{lpips_net}"), lpips_net=lpips_net)
    cfg = SearchConfig(w_lr=LR, w_momentum=MOMENTUM, w_clip=CLIP)
    if not contiguous:  # as the search runs it (channels-last on the CPU)
        net = place(net)
        lower, upper = [place_batch(b) for b in lower], [place_batch(b) for b in upper]
    if compile_:
        net.compile()
    upper_vars = list(net.arch_parameters())
    w_opt, u_opt = make_optimizers(cfg, net, upper_vars)
    state = BilevelState(net, upper_vars, w_opt, u_opt)

    def objective(pred, target):
        return criterion(pred, target)[0]

    def step(i: int) -> None:
        bilevel_step(state, order=order, lower_batch=lower[i % N_BATCHES], upper_batch=upper[i % N_BATCHES],
                     lower_loss=criterion, upper_objective=objective, clip=cfg.w_clip, lower_step=lower_step)

    return step


# ------------------------------------------------------------------------------------------
# worker process: build, then answer "step" / "done" on stdin with one JSON line each
# ------------------------------------------------------------------------------------------
def worker(impl: str, config: str, order: str, ref_dir: str | None, files: dict[str, str], threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    out = sys.stdout
    sys.stdout = sys.stderr  # the reference prints; keep the protocol channel clean
    import_kib = _status_kib("VmRSS")
    step = (build_reference(ref_dir, config, order, files) if impl == "reference"  # type: ignore[arg-type]
            else build_ours(impl, config, order, files))
    gc.collect()
    setup_kib, setup_hwm_kib = _status_kib("VmRSS"), _status_kib("VmHWM")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: from here on it is the steps' peak
    i = 0

    def reply(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    reply({"ready": True})
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "step":
            t0 = time.perf_counter()
            step(i)
            reply({"seconds": time.perf_counter() - t0})
            i += 1
        elif cmd == "done":
            hwm = _status_kib("VmHWM")
            reply({"import_mib": import_kib / 1024, "setup_mib": setup_kib / 1024,
                   "process_peak_mib": max(hwm, setup_hwm_kib) / 1024,
                   "step_peak_mib": (hwm - setup_kib) / 1024, "steps": i})
            return


class Worker:
    def __init__(self, impl: str, config: str, order: str, args: argparse.Namespace, files_json: str) -> None:
        self.impl = impl
        cmd = [sys.executable, __file__, "--worker", impl, config, order, "--files", files_json,
               "--threads", str(args.threads)]
        if args.reference_dir:
            cmd += ["--reference-dir", str(args.reference_dir)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)

    def ask(self, cmd: str) -> dict[str, Any]:
        assert self.proc.stdin and self.proc.stdout
        if cmd:
            self.proc.stdin.write(cmd + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.impl} died (exit {self.proc.wait()})")
        return json.loads(line)


def _quantiles(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)
    q = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) >= 2 else [xs[0]] * 3
    return {"median": statistics.median(xs), "q25": q[0], "q75": q[2], "min": xs[0], "max": xs[-1], "n": len(xs)}


def run_pair(config: str, order: str, impls: list[str], args: argparse.Namespace, files_json: str) -> dict[str, Any]:
    workers = [Worker(impl, config, order, args, files_json) for impl in impls]
    for w in workers:  # sequential: one build at a time
        w.ask("")
    for _ in range(args.warmup):
        for w in workers:
            w.ask("step")
    times: dict[str, list[float]] = {w.impl: [] for w in workers}
    for r in range(args.rounds):
        for w in workers[r % len(workers):] + workers[:r % len(workers)]:
            times[w.impl].append(w.ask("step")["seconds"])
        print(f"  [{config}/{order}] round {r + 1}/{args.rounds}: "
              + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), flush=True)
    memory = {w.impl: w.ask("done") for w in workers}
    for w in workers:
        w.proc.wait(timeout=60)
    res: dict[str, Any] = {"times_s": times, "stats": {k: _quantiles(v) for k, v in times.items()}, "memory": memory}
    if "reference" in times:
        ref = times["reference"]
        res["ratio_to_reference"] = {k: _quantiles([a / b for a, b in zip(v, ref)]) for k, v in times.items()}
        res["memory_ratio_to_reference"] = {
            k: {m: memory[k][m] / memory["reference"][m] for m in ("process_peak_mib", "step_peak_mib")}
            for k in memory
        }
    return res


def table(results: dict[str, Any]) -> str:
    rows = ["| configuration | order | implementation | s/step median | IQR (s) | ÷ reference (paired) | "
            "process peak MiB | ÷ ref | step peak MiB | ÷ ref |",
            "|---|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for key, r in results.items():
        config, order = key.split("/")
        for impl, s in r["stats"].items():
            rr = r.get("ratio_to_reference", {}).get(impl, {}).get("median")
            m = r["memory"][impl]
            mr = r.get("memory_ratio_to_reference", {}).get(impl, {})
            rows.append(
                f"| {config} | {order} | {impl} | {s['median']:.2f} | {s['q25']:.2f}–{s['q75']:.2f} | "
                f"{'' if rr is None else f'{rr:.2f}'} | {m['process_peak_mib']:.0f} | "
                f"{mr.get('process_peak_mib', float('nan')):.2f} | {m['step_peak_mib']:.0f} | "
                f"{mr.get('step_peak_mib', float('nan')):.2f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference-dir", type=Path, help="a scratch copy of zhudear/HBLALS_pytorch")
    ap.add_argument("--reference-commit", help="the copy's commit, recorded in the JSON when the copy has no .git")
    ap.add_argument("--configs", default="weightfree,perceptual")
    ap.add_argument("--orders", default="second,first")
    ap.add_argument("--variants", default="ours", help=f"our variants, comma list of: {', '.join(VARIANTS)}")
    ap.add_argument("--no-reference", action="store_true", help="time our variants only")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "reference_step.json")
    ap.add_argument("--worker", nargs=3, metavar=("IMPL", "CONFIG", "ORDER"), help=argparse.SUPPRESS)
    ap.add_argument("--files", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(*args.worker, str(args.reference_dir) if args.reference_dir else None, json.loads(args.files), args.threads)
        return 0

    impls = [v for v in args.variants.split(",") if v]
    unknown = [v for v in impls if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}; known: {', '.join(VARIANTS)}")
    if not args.no_reference:
        if args.reference_dir is None or not (args.reference_dir / "architect.py").is_file():
            ap.error("--reference-dir must point at a copy of zhudear/HBLALS_pytorch (architect.py not found); "
                     "or pass --no-reference")
        impls = ["reference", *impls]
    info = {**machine_info(), "threads": args.threads}
    start = load_now()
    print(f"machine: {info['cpu_model']}, {info['logical_cpus']} CPUs, torch {info['torch']}, "
          f"{args.threads} threads, load {start['loadavg']}", flush=True)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        files_json = json.dumps(write_weight_files(Path(tmp)))
        for config in [c for c in args.configs.split(",") if c]:
            for order in [o for o in args.orders.split(",") if o]:
                print(f"== {config} / {order}: {impls}", flush=True)
                results[f"{config}/{order}"] = run_pair(config, order, impls, args, files_json)
                print(table({f"{config}/{order}": results[f"{config}/{order}"]}), flush=True)
    ref_commit = args.reference_commit
    if args.reference_dir and not ref_commit:
        head = subprocess.run(["git", "-C", str(args.reference_dir), "rev-parse", "HEAD"], capture_output=True, text=True)
        ref_commit = head.stdout.strip() or None
    doc = {
        "benchmark": "reference_step",
        "what": "seconds and peak RSS per stage-A search step, hbl-edge vs the reference code, interleaved processes",
        "setup": {"supernet": f"{CHANNELS[0]}/{CHANNELS[1]} x {UNITS} HNUs, paper space", "batch": BATCH, "crop": CROP,
                  "w_opt": f"SGD lr {LR} momentum {MOMENTUM} clip {CLIP}", "u_opt": "Adam lr 5e-4 betas 0.5/0.999 wd 1e-4",
                  "configs": {k: list(v) for k, v in CONFIGS.items()}, "variants": {k: VARIANTS[k] for k in impls if k in VARIANTS},
                  "rounds": args.rounds, "warmup": args.warmup, "data": "embedded lowlight crops, drawn before timing",
                  "reference": {"repository": "github.com/zhudear/HBLALS_pytorch", "commit": ref_commit,
                                "shims": list(SHIMS)}},
        "machine": info,
        "load": {"start": start, "end": load_now()},
        "results": results,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print("\n" + table(results))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
