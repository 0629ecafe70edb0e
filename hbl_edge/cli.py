"""The ``hbl-edge`` command line: a thin typer shell over library functions.

Every command turns a user mistake (:class:`hbl_edge.errors.HblError`) into one line on
stderr and exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Callable, List, Optional, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .errors import ConfigError, HblError
from .runio import parse_resolution

app = typer.Typer(
    name="hbl-edge",
    help="Hadamard-based image restoration (low light, haze, underwater): search, train, export, run.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=False)
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable)


def _setup_logging(verbose: bool = False) -> None:
    root = logging.getLogger()
    if not any(isinstance(h, RichHandler) for h in root.handlers):
        handler = RichHandler(console=err_console, show_time=False, show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("hbl_edge").setLevel(logging.INFO)


def user_errors(fn: F) -> F:
    """Report HblError as one line and exit 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _setup_logging()
        try:
            return fn(*args, **kwargs)
        except HblError as e:
            # escape: a message naming `pip install 'hbl-edge[train]'` must not lose "[train]" as markup
            err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _progress(transient: bool = False) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
    )


# ------------------------------------------------------------------------------------------
@app.command()
@user_errors
def train(
    task: str = typer.Option("lowlight", help="lowlight | dehaze | underwater"),
    genotype: str = typer.Option("hbl-lol-2022", help="built-in genotype name or path to genotype.json"),
    loss: Optional[str] = typer.Option(None, help="loss terms 'l1=1,ssim=1' or a loss.json; default: the task's (l1 for an edge genotype)"),
    data: str = typer.Option("embedded", help="'embedded' or a dataset folder (see README: dataset layouts)"),
    steps: int = typer.Option(2000, help="training steps"),
    batch_size: int = typer.Option(4, help="images per step (≥ 2)"),
    crop: int = typer.Option(128, help="training crop side (multiple of 4)"),
    optimizer: str = typer.Option("adam", help="adam | adamw | sgd"),
    lr: float = typer.Option(1e-3, help="peak learning rate"),
    schedule: str = typer.Option("cosine", help="cosine | step | constant"),
    clip: float = typer.Option(5.0, help="gradient-norm clip"),
    val_every: int = typer.Option(200, help="validate every N steps"),
    ckpt_every: int = typer.Option(200, help="checkpoint every N steps"),
    seed: int = typer.Option(0),
    deterministic: bool = typer.Option(False, help="deterministic algorithms (slower)"),
    strict: bool = typer.Option(False, help="fail on unmatched or mismatched pairs instead of skipping them"),
    vgg_weights: Optional[Path] = typer.Option(None, help="local VGG19 weights (enables the vgg loss term)"),
    lpips_weights: Optional[Path] = typer.Option(None, help="local LPIPS weights (enables the lpips term)"),
    lpips_net: Optional[str] = typer.Option(None, help="LPIPS backbone: alex | vgg (default: read off the weight file)"),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads"),
    exposure_calibration: bool = typer.Option(
        True, "--exposure-calibration/--no-exposure-calibration",
        help="retinex edge networks: fit the output's global gain on whole training frames after training"),
    synthetic_mix: float = typer.Option(
        0.0, help="probability that a sample's input is the task's formation model applied to the real target "
                  "(more water types / hazes / exposures than the real pairs hold; 0 = real inputs only)"),
    out: Path = typer.Option(Path("runs/train"), help="run directory"),
    resume: bool = typer.Option(False, help="continue the run in --out from its checkpoint"),
) -> None:
    """Train a network of a fixed genotype (stage T) and write a model bundle.

    Data parallel under torchrun: `torchrun --nproc-per-node N -m hbl_edge train ...` (docs/distributed.md).
    """
    from .train import TrainConfig

    cfg = TrainConfig(
        task=task, genotype=genotype, loss=loss, data=data, out=str(out), steps=steps, batch_size=batch_size,
        crop=crop, optimizer=optimizer, lr=lr, schedule=schedule, clip=clip, val_every=val_every,
        ckpt_every=ckpt_every, seed=seed, deterministic=deterministic, strict_data=strict,
        vgg_weights=str(vgg_weights) if vgg_weights else None,
        lpips_weights=str(lpips_weights) if lpips_weights else None, lpips_net=lpips_net, threads=threads,
        calibrate_exposure=exposure_calibration, synthetic_mix=synthetic_mix,
    )
    if not _is_main_process():
        from .train import train as run_train

        run_train(cfg, resume=resume)
        return
    result = _train_with_progress(cfg, resume=resume)
    if result.interrupted:
        raise typer.Exit(130)
    m = result.metrics
    console.print(
        f"[green]done[/]: {result.out}  val PSNR {m['val_psnr']:.2f} dB (input {m['val_input_psnr']:.2f}), "
        f"SSIM {m['val_ssim']:.3f} (input {m['val_input_ssim']:.3f})"
    )


def _is_main_process() -> bool:
    """Rank 0 of a torchrun launch (or a plain process) draws progress and prints results;
    the other ranks only report errors."""
    from .distributed import env_rank

    if env_rank() == 0:
        return True
    logging.getLogger("hbl_edge").setLevel(logging.ERROR)
    return False


def _train_with_progress(cfg, resume: bool = False, description: str = "train"):
    from .train import TrainSession

    session = TrainSession(cfg, resume=resume)  # every user error surfaces before drawing
    with _progress() as prog:
        bar = prog.add_task(description, total=cfg.steps, completed=session.step, status="")
        last_val: dict[str, str] = {"v": ""}

        def on_step(step: int, rec: dict) -> None:
            if "val_psnr" in rec:
                last_val["v"] = f"val {rec['val_psnr']:.2f} dB"
            prog.update(bar, completed=step, status=f"loss {rec['loss']:.4f} {last_val['v']}")

        result = session.run(on_step)
    session.dist.barrier()  # under torchrun: every rank is done, leave the process group together
    session.dist.shutdown()
    return result


MODEL_HELP = "model: a bundle (run directory), its export/ folder, or a copy of that folder"
BACKEND_HELP = ("auto | trt | trt-rtx | ort | torch. auto: the first that can run the model here, in that order "
                "(trt/trt-rtx build an engine from the ONNX on this machine, cached; torch needs the bundle)")


def _torch_present() -> bool:
    from .runtime.runners import unavailable_reason

    return unavailable_reason("torch") is None


def _deploy_model(model: Path, backend: str) -> Path:
    """On a machine with torch, a bundle's export/ is brought up to date before a deploy command runs it."""
    if backend not in ("torch", "torch-compile"):
        from .export.pipeline import ensure_export

        ensure_export(model)
    return model


@app.command()
@user_errors
def enhance(
    inputs: List[Path] = typer.Argument(..., help="image files and/or folders"),
    model: Path = typer.Option(..., "--model", "-m", help=MODEL_HELP),
    out: Path = typer.Option(Path("enhanced"), help="output folder"),
    tile: Optional[int] = typer.Option(
        None, help="tile side for large images (default: automatic above 4 MP or beyond an engine's profiles)"),
    threads: Optional[int] = typer.Option(None, help="CPU threads (onnxruntime or torch)"),
    overwrite: bool = typer.Option(False, help="replace existing outputs"),
    backend: str = typer.Option("auto", help=BACKEND_HELP),
    fp16: bool = typer.Option(False, "--fp16", help="FP16: model.fp16.onnx (ort) or an FP16 engine (trt, trt-rtx)"),
) -> None:
    """Enhance images with a trained model (a bundle or an export/ folder; no torch needed for the latter)."""
    from .enhance import enhance_paths
    from .runtime.model import load_model

    if tile is not None and tile < 32:
        raise ConfigError(f"--tile must be at least 32 pixels, got {tile}")
    files = _collect_images(inputs)
    with load_model(_deploy_model(model, backend), backend, threads=threads, fp16=fp16) as loaded:
        # transient: a run that ends in an error leaves only the error line behind
        with _progress(transient=True) as prog:
            bar = prog.add_task(f"enhance ({loaded.backend})", total=len(files), status="")
            report = enhance_paths(
                files, lambda img: loaded.enhance(img, tile=tile), out, overwrite=overwrite,
                progress=lambda i, name: prog.update(bar, completed=i, status=name),
            )
    console.print(f"[green]wrote[/] {report['written']} image(s) to {out} with {loaded.backend}" + (
        f"; skipped {len(report['failed'])} unreadable: {', '.join(report['failed'][:5])}" if report["failed"] else ""
    ) + (f"; kept {report['existing']} existing (pass --overwrite)" if report["existing"] else ""))


def _collect_images(inputs: List[Path]) -> List[Path]:
    from .imageio import list_images

    files: List[Path] = []
    for p in inputs:
        if p.is_dir():
            found = list_images(p)
            if not found:
                raise ConfigError(f"{p}: no images in this folder")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise ConfigError(f"{p}: no such file or folder")
    return files


@app.command("eval")
@user_errors
def eval_cmd(
    model: Optional[Path] = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    baseline: Optional[str] = typer.Option(None, help="classical baseline name instead of a model"),
    data: str = typer.Option("embedded", help="'embedded' (test split) or a folder, paired or unpaired"),
    task: Optional[str] = typer.Option(None, help="task (default: the bundle's, or the baseline's)"),
    out: Path = typer.Option(Path("runs/eval"), help="folder for eval.json (and images)"),
    save_images: bool = typer.Option(False, help="also write the enhanced images"),
    tile: Optional[int] = typer.Option(None),
    threads: Optional[int] = typer.Option(None),
    backend: str = typer.Option("torch", help="torch | ort | trt | trt-rtx | auto (torch: the bundle's weights as trained)"),
) -> None:
    """Score a model or a classical baseline: PSNR/SSIM on pairs, UIQM/UCIQE without references."""
    from .evaluate import baseline_method, evaluate, model_method

    if (model is None) == (baseline is None):
        raise ConfigError("give exactly one of --model BUNDLE or --baseline NAME")
    method = model_method(model, tile=tile, threads=threads, backend=backend) if model else baseline_method(baseline)
    try:
        task_name = task or method.info["task"]
        if task_name is None:
            raise ConfigError(f"{model}: the export records no task; pass --task lowlight|dehaze|underwater")
        report = evaluate(method, data, task_name, out=out, save_images=save_images)
    finally:
        if method.close is not None:
            method.close()
    print_report(report)
    console.print(f"report: {out / 'eval.json'}")


def print_report(report: dict) -> None:
    table = Table(title=f"{report['method_kind']} {report['method']} on {report['data']} ({report['kind']}, {report['images']} images)")
    table.add_column("metric")
    table.add_column("input", justify="right")
    table.add_column("output", justify="right")
    for k, v in report["mean"].items():
        if k.startswith("input_"):
            continue
        inp = report["mean"].get(f"input_{k}")
        table.add_row(k, f"{inp:.4f}" if inp is not None else "–", f"{v:.4f}")
    table.add_row("ms / image (median)", "", f"{report['ms_median']:.1f}")
    console.print(table)


@app.command()
@user_errors
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="where the demo writes everything"),
    steps: int = typer.Option(1000, help="training steps of the searched model and of the peer-sized net beside it"),
    task: str = typer.Option("lowlight"),
) -> None:
    """Search an edge model under the fast peer's measured latency (SCI for low light) on the embedded data, train it
    and the peer's architecture alike, and show quality and latency of both, the baselines and the input side by side."""
    from .demo import run_demo

    run_demo(out=out, steps=steps, task=task, search_fn=run_search_with_progress, console=console, print_report=print_report)


# ------------------------------------------------------------------------------------------
# export and bench (deployment; see docs/deployment.md)
def _newest_bundle(root: Path = Path("runs")) -> Path:
    """The most recently modified run directory under ``root`` (searched recursively) holding a model.json."""
    found = [p.parent for p in root.rglob("model.json") if (p.parent / "model.safetensors").is_file()] if root.is_dir() else []
    if not found:
        raise ConfigError(f"no model bundle (model.json + model.safetensors) under {root.resolve()}; pass BUNDLE explicitly")

    def modified(d: Path) -> float:
        return max((d / n).stat().st_mtime for n in ("model.json", "model.safetensors"))

    return max(found, key=modified)


def _bundle_or_newest(bundle: Optional[Path]) -> Path:
    if bundle is not None:
        return bundle
    picked = _newest_bundle()
    err_console.print(f"using the newest run under ./runs: {picked}", highlight=False)
    return picked


def _parity_table(rows: list) -> Table:
    table = Table(title="parity")
    for col in ("artifact", "reference", "images", "max |Δ|", "mean |Δ|", "tolerance", "PSNR dB", "ok"):
        table.add_column(col, justify="left" if col in ("artifact", "reference") else "right")
    for r in rows:
        table.add_row(*r)
    return table


@app.command()
@user_errors
def export(
    bundle: Optional[Path] = typer.Argument(
        None, help="a model bundle (run directory; default: the newest run under ./runs), or an export/ folder "
        "(or a copy of one) to build an engine from, with --engine: no torch needed"),
    out: Optional[Path] = typer.Option(
        None, help="output folder (default: BUNDLE/export; for an export folder: the folder itself, or the user "
        "cache when it is read-only)"),
    opset: Optional[int] = typer.Option(None, help="ONNX opset, 13–20 (default 17: parsed by TensorRT 10.3 on JetPack 6 and newer)"),
    tolerance: Optional[float] = typer.Option(None, help="max |ONNX Runtime − PyTorch| accepted (FP32; default 1e-4)"),
    fp16: bool = typer.Option(False, "--fp16", help="also write model.fp16.onnx (FP16 compute, float32 I/O); an FP16 engine"),
    int8: bool = typer.Option(False, "--int8", help="also write model.int8.onnx (Q/DQ, calibrated on the task's data); an INT8 engine"),
    calib_data: Optional[str] = typer.Option(None, help="INT8 calibration/validation data: 'embedded' (default) or a dataset folder"),
    calib_samples: Optional[int] = typer.Option(None, help="INT8 calibration crops (default 32)"),
    engine: Optional[str] = typer.Option(
        None, help="also build an engine: tensorrt | tensorrt-rtx (precision: int8 with --int8, else fp16 with --fp16, else fp32)"),
    shapes: Optional[List[str]] = typer.Option(
        None, "--shapes", help="engine profile 'min=WxH,opt=WxH,max=WxH[,batch=N]'; repeat for several"),
    workspace_mb: int = typer.Option(1024, help="engine builder workspace limit (MB)"),
    timing_cache: Optional[Path] = typer.Option(None, help="TensorRT timing cache file (read, then updated)"),
    compute_capability: Optional[List[str]] = typer.Option(
        None, "--compute-capability", help="TensorRT-RTX target, e.g. SM86; repeat for several"),
    force_rebuild: bool = typer.Option(False, help="rebuild the engine even when the cache holds a matching one"),
) -> None:
    """Export a bundle to ONNX (+ FP16/INT8) with parity checks, and optionally build a TensorRT(-RTX) engine;
    or, given an export/ folder, build the engine only (on the device, no torch)."""
    from .runtime.model import resolve_model_path

    source = resolve_model_path(_bundle_or_newest(bundle))
    export_options = {"--opset": opset, "--tolerance": tolerance, "--calib-data": calib_data,
                      "--calib-samples": calib_samples}
    if source.kind == "bundle" and _torch_present():
        return _export_bundle(source.bundle_dir, out, opset=17 if opset is None else opset,
                              tolerance=1e-4 if tolerance is None else tolerance, fp16=fp16, int8=int8,
                              calib_data=calib_data or "embedded", calib_samples=32 if calib_samples is None else calib_samples,
                              engine=engine, shapes=shapes, workspace_mb=workspace_mb, timing_cache=timing_cache,
                              compute_capabilities=compute_capability, force_rebuild=force_rebuild)
    # From here on: an export folder (or a bundle on a machine without torch): engines only.
    if source.kind == "bundle" and (source.export_dir is None or engine is None):
        raise ConfigError(
            f"exporting {source.bundle_dir} to ONNX needs torch, which is not installed here; export it on the "
            "training machine (`pip install 'hbl-edge[train]'`) and copy its export/ folder here, then build the "
            "engine with `hbl-edge export EXPORT_DIR --engine tensorrt`"
        )
    if engine is None:
        raise ConfigError(
            f"{source.export_dir} is an export folder (already exported); add --engine tensorrt or --engine "
            "tensorrt-rtx to build an engine from it" + (", or pass the bundle to export it again" if source.bundle_dir else "")
        )
    given = [k for k, v in export_options.items() if v is not None]
    if given:
        raise ConfigError(f"{', '.join(given)} apply to exporting a bundle to ONNX; {source.export_dir} is already "
                          "exported (drop them, or pass the bundle on a machine with torch)")
    if source.kind == "bundle":
        err_console.print(f"torch is not installed here: building the engine from the existing {source.export_dir} "
                          "(not exported again)", highlight=False, soft_wrap=True)
    from .export.pipeline import build_engine_for_export

    with console.status(f"building the {engine} engine"):
        r = build_engine_for_export(source.export_dir, out, kind=engine, shapes=shapes, fp16=fp16, int8=int8,
                                    workspace_mb=workspace_mb, timing_cache=timing_cache,
                                    compute_capabilities=compute_capability, force=force_rebuild)
    _print_engine(r)


def _print_engine(r) -> None:
    console.print(f"[green]{'built' if r.built else 'cached'}[/] {r.path.name} ({r.kind} {r.library_version}, "
                  f"{r.precision}, {'; '.join(r.profiles)}, device {r.device}) in {r.path.parent}", highlight=False)


def _export_bundle(bundle: Path, out: Optional[Path], *, opset: int, **options) -> None:
    from .export.pipeline import export_bundle

    engine, int8 = options.get("engine"), options.get("int8")
    with console.status("exporting ONNX, checking parity" + (", quantising, building the engine" if engine or int8 else "")):
        s = export_bundle(bundle, out, opset=opset, **options)
    result, q = s.onnx, s.int8
    rows = []
    for label, rep in ((result.onnx_path.name, result.parity), (f"{result.onnx_path.stem}.fp16.onnx", result.fp16_parity)):
        if rep is not None:
            rows.append([label, rep.reference, str(len(rep.cases)), f"{rep.max_abs:.3g}", f"{rep.mean_abs:.3g}",
                         f"{rep.tolerance:g}", "", "[green]yes[/]" if rep.passed else "[red]no[/]"])
    if q is not None:
        rows.append([q.path.name, "onnxruntime fp32", str(q.quality["images"]), f"{q.parity['max_abs']:.3g}",
                     f"{q.parity['mean_abs']:.3g}", "–", f"{q.quality['psnr_mean_db']:.1f} (min {q.quality['psnr_min_db']:.1f})",
                     "[yellow]check[/]" if q.warnings else "[green]yes[/]"])
    console.print(_parity_table(rows))
    console.print(f"[green]wrote[/] {', '.join(p.name for p in s.written)} and {result.meta_path.name} to {s.out_dir} "
                  f"(opset {opset})")
    if s.engine is not None:
        _print_engine(s.engine)


@app.command()
@user_errors
def bench(
    model: Optional[Path] = typer.Argument(None, help=MODEL_HELP + "; default: the newest run under ./runs"),
    backend: str = typer.Option("ort,torch", help="comma-separated: ort, torch, torch-compile, trt, trt-rtx"),
    resolution: str = typer.Option("1280x720", help="WIDTHxHEIGHT of the input"),
    batch: int = typer.Option(1, help="images per call"),
    warmup: int = typer.Option(3, help="untimed calls per backend first"),
    iters: int = typer.Option(20, help="timed rounds (each runs every backend once, order rotated)"),
    threads: Optional[int] = typer.Option(None, help="CPU threads for ort and torch (default: each library's)"),
    fp16: bool = typer.Option(False, "--fp16", help="FP16: model.fp16.onnx (ort), FP16 engines (trt, trt-rtx)"),
    json_path: Optional[Path] = typer.Option(None, "--json", help="also write the report here"),
) -> None:
    """Latency of several backends side by side: p50/p90/p99 and images/s, with what it ran on."""
    from .runio import write_json
    from .runtime.benchmark import parse_backends, render_table, run_benchmark

    names = parse_backends(backend)
    res = parse_resolution(resolution)
    model = _bundle_or_newest(model)
    if any(n not in ("torch", "torch-compile") for n in names):
        _deploy_model(model, "ort")
    with console.status("benchmarking") as status:
        report = run_benchmark(model, names, resolution=res, batch=batch, warmup=warmup, iters=iters,
                               threads=threads, fp16=fp16, progress=lambda m: status.update(m))
    console.print(render_table(report))
    if json_path is not None:
        write_json(json_path, report.to_dict())
        console.print(f"report: {json_path}")


@app.command()
@user_errors
def stream(
    source: str = typer.Argument(..., metavar="INPUT", help=(
        "video file or file://, image folder or glob, rtp://@:PORT (H.264 RTP, BlueOS: rtp://@:5600), an .sdp file, "
        "rtsp://HOST:PORT/PATH, udp://@:PORT (MPEG-TS), /dev/videoN or v4l2://, csi://N")),
    outputs: Optional[List[str]] = typer.Argument(None, metavar="[OUTPUT]...", help=(
        "any number of: video file (.mp4/.mkv), image folder, rtp://HOST:PORT (+ an .sdp beside it), "
        "udp://HOST:PORT (MPEG-TS), rtsp://@:PORT/NAME (served), display://0")),
    model: Path = typer.Option(..., "--model", "-m", help="a bundle, its export/ folder, or a copy of that folder"),
    backend: str = typer.Option("auto", help="auto | trt | trt-rtx | ort | torch"),
    fp16: bool = typer.Option(False, "--fp16", help="the FP16 model/engine when there is one"),
    threads: Optional[int] = typer.Option(None, help="CPU threads of the backend"),
    ort_spinning: bool = typer.Option(
        False, "--ort-spinning/--no-ort-spinning",
        help="ort: let idle inference threads busy-wait (off by default: it takes the cores decode and encode need; docs/runtime.md)"),
    input_codec: str = typer.Option("h264", help="RTP payload codec: h264 | h265"),
    input_width: Optional[int] = typer.Option(None, help="ask the camera for / resize frames to this width"),
    input_height: Optional[int] = typer.Option(None, help="ask the camera for / resize frames to this height"),
    input_rate: Optional[float] = typer.Option(None, help="frames per second to ask for / keep"),
    input_latency: int = typer.Option(0, help="RTSP jitter buffer, ms"),
    input_loop: int = typer.Option(0, help="file inputs: 0 play once, N more times, -1 forever"),
    input_flip: str = typer.Option("none", help="none | horizontal | vertical | rotate-180"),
    input_transport: str = typer.Option("tcp", help="RTSP transport: tcp | udp"),
    input_timeout: float = typer.Option(2.0, help="seconds of silence after which a live input counts as lost (then reconnect)"),
    input_receiver: str = typer.Option("auto", help="RTP/RTSP receive path: auto | packets | gstreamer | pyav (docs/runtime.md)"),
    output_codec: str = typer.Option("h264", help="encoded outputs: h264 | h265"),
    bitrate: int = typer.Option(4_000_000, help="encoded outputs: target bitrate in bits per second"),
    keyframe_interval: float = typer.Option(1.0, help="encoded outputs: at least one keyframe (SPS/PPS repeated) per this many seconds"),
    headless: bool = typer.Option(False, "--headless", help="open no display window"),
    sdp: Optional[Path] = typer.Option(None, help="where an rtp:// output writes its SDP file (default: rtp-HOST-PORT.sdp here)"),
    preview: Optional[str] = typer.Option(None, help="[HOST:]PORT: serve a live page (raw | enhanced, FPS, latency); binds 127.0.0.1 unless HOST is given"),
    stats_json: Optional[Path] = typer.Option(None, help="write the stats (latency p50/p99, FPS, drops, gaps) here, every second and at exit"),
    temporal: bool = typer.Option(False, "--temporal", help="remove flicker on static scenes (motion-gated smoothing)"),
    duration: Optional[float] = typer.Option(None, help="stop after this many seconds"),
    frames: Optional[int] = typer.Option(None, help="stop after this many enhanced frames"),
) -> None:
    """Enhance live video or a file into any number of outputs (Ctrl-C drains, closes every output, exits 0)."""
    from .runtime.enhancer import Enhancer
    from .runtime.pipeline import Pipeline, PipelineConfig
    from .runtime.video import VideoOptions, open_sink, open_source

    opts = VideoOptions(
        width=input_width, height=input_height, rate=input_rate, codec=input_codec, latency_ms=input_latency,
        loop=input_loop, flip=input_flip, transport=input_transport, timeout_s=input_timeout, output_codec=output_codec,
        bitrate_kbps=max(1, bitrate // 1000), keyframe_interval_s=keyframe_interval, headless=headless,
        receiver=input_receiver, sdp_path=str(sdp) if sdp else None,
    )
    config = PipelineConfig(temporal=temporal, duration_s=duration, max_frames=frames, stats_json=stats_json)
    src = open_source(source, opts)  # URIs and options are checked before the model loads
    sinks = [open_sink(o, opts) for o in outputs or []]
    pv = None
    if preview is not None:
        from .runtime.preview import Preview

        pv = Preview(preview)
    # load_model (through the Enhancer) picks and checks the backend; a bundle's export/ is brought
    # up to date first where torch is installed, as for `enhance`. ORT's spinning threads are off
    # unless asked for: they compete with decode/encode (measured, docs/runtime.md).
    enhancer = Enhancer(_deploy_model(model, backend), backend, threads=threads, fp16=fp16,
                        allow_spinning=ort_spinning)
    try:
        live_line = _StreamLine(err_console)
        pipe = Pipeline(src, sinks, enhancer, config, preview=pv, on_tick=live_line.update)
        pipe.prepare()  # opens the input, starts every output and the preview: bad arguments end here
        info = enhancer.describe()
        err_console.print(f"streaming {source} → {', '.join(outputs or []) or '(no outputs)'} with {info.get('model')} "
                          f"({info.get('backend')})" + (f"; preview at {pv.url}" if pv is not None else ""),
                          highlight=False, soft_wrap=True)
        with live_line:
            final = pipe.run()
    finally:
        enhancer.close()
    f, g = final["frames"], final["gaps"]
    lat = final["latency_ms"]
    glass = lat.get("glass") or lat.get("infer")
    console.print(
        f"[green]done[/]: {f['out']} frames enhanced ({final['fps']['out_avg']:.1f} fps), {f['dropped']} dropped, "
        f"{f['corrupt']} corrupt"
        + (f", {g['count']} source gap(s) ({g['total_s']:.1f} s)" if g["count"] else "")
        + (f"; {'glass-to-glass' if lat.get('glass') else 'inference'} p50 {glass['p50']:.1f} ms, p99 {glass['p99']:.1f} ms" if glass else "")
        + "".join(f"; output {n} failed: {s['failed']}" for n, s in final["sinks"].items() if s["failed"])
        + (f"; stats: {stats_json}" if stats_json else ""), highlight=False, soft_wrap=True)


class _StreamLine:
    """The live stats line on stderr (rich Live on a terminal; a plain line every 10 s otherwise)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._live = None
        self._last_plain = 0.0

    def __enter__(self) -> "_StreamLine":
        if self.console.is_terminal:
            from rich.live import Live
            from rich.text import Text

            self._live = Live(Text("starting …"), console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None

    def update(self, snapshot: dict) -> None:
        import time

        from .runtime.stats import format_line

        line = format_line(snapshot)
        if self._live is not None:
            from rich.text import Text

            self._live.update(Text(line))
        elif time.monotonic() - self._last_plain >= 10.0:
            self._last_plain = time.monotonic()
            self.console.print(line, highlight=False, soft_wrap=True)


@app.command()
@user_errors
def search(
    task: str = typer.Option("lowlight", help="lowlight | dehaze | underwater"),
    data: str = typer.Option("embedded", help="'embedded' or a dataset folder"),
    test_data: Optional[str] = typer.Option(None, help="paired folder to test the final model on (default: --data's own test/ split)"),
    device: str = typer.Option("cpu", help="cpu | cuda | jetson | jetson-orin-nano | jetson-orin-nx | jetson-agx-orin | jetson-xavier-nx"),
    backend: str = typer.Option("onnxruntime", help="backend the target runs (for measured latency): onnxruntime | torch | tensorrt"),
    latency_budget: Optional[str] = typer.Option(None, help="latency budget in ms at --resolution (omit: no latency term); several (8,16,32,64): a Pareto sweep, one network per budget"),
    reference: Optional[str] = typer.Option(None, help="Pareto sweep: reference points NAME=MS:PSNR[:SSIM],... or a .csv (name,ms,psnr[,ssim])"),
    latency_table: Optional[Path] = typer.Option(None, help="latency table measured on the target (hbl-edge profile)"),
    latency_form: str = typer.Option("multiplicative", help="multiplicative L·(LAT/T)^β | additive L + μ·LAT/T | hinge L·max(1, LAT/T)^β"),
    latency_beta: float = typer.Option(0.2, help="β of the multiplicative and hinge forms"),
    latency_threads: Optional[int] = typer.Option(
        None, help="intra-op threads of the runner the latency is for (default: the backend's, as `hbl-edge bench`)"),
    latency_spinning: Optional[bool] = typer.Option(
        None, "--latency-spinning/--no-latency-spinning",
        help="onnxruntime spinning of the runner the latency is for (default: onnxruntime's, on; `hbl-edge stream` runs it off)"),
    latency_mu: float = typer.Option(0.1, help="μ of the additive form"),
    resolution: str = typer.Option("1280x720", help="WxH the budget refers to"),
    space: str = typer.Option("paper", help="search space: paper | edge"),
    macro: Optional[str] = typer.Option(None, help="edge: also search the edge macro-architecture (scale, widths, units, refinement; needs --latency-budget)"),
    macro_scales: str = typer.Option("2,4,8", help="--macro edge: scales s the maps are estimated at"),
    macro_widths: str = typer.Option("8/16,16/32", help="--macro edge: C1/C2 widths of the inner network"),
    macro_units: str = typer.Option("1,3", help="--macro edge: HNU counts"),
    macro_refine: Optional[str] = typer.Option(None, help="--macro edge: refinement branches (none, or ops joined by +); default none,boxmix_3x3,boxmix_5x5"),
    macro_steps: int = typer.Option(0, help="--macro edge: short stage-A steps per candidate (0: steps-a / 4)"),
    macro_train_steps: Optional[int] = typer.Option(None, help="--macro edge: stage-T steps each candidate's derived network trains before the best validation PSNR wins (0: rank by the short search's loss; default 300, --quick 100)"),
    macro_proxy_seeds: Optional[int] = typer.Option(None, help="--macro edge: seeds each candidate's network trains with (each its own validation carve-out); the mean PSNR ranks (default 3, --quick 1)"),
    hnu_norm: str = typer.Option("edge", help="HNU edges: one BatchNorm per edge (edge, the reference's) or per candidate op (candidate, DARTS)"),
    objective: str = typer.Option("critic", help="stage-L upper objective: critic | fidelity"),
    terms: Optional[str] = typer.Option(None, help="loss terms stage L weighs, e.g. l1,l2,color (default: l1,l2,color,ssim,tv,laplacian; under --macro edge l1,l2,color)"),
    lambda_lr: Optional[float] = typer.Option(None, help="Adam learning rate of the loss weights in stage L (default: the upper learning rate)"),
    loss_check: Optional[str] = typer.Option(None, help="--macro edge: losses the sweep's winner also trains with, ';'-separated (e.g. l1;l1=1,color=0.5); the best mean validation PSNR, stage L's λ* included, trains stages A and T (default l1; none: use λ* unchecked)"),
    selection: str = typer.Option("argmax", help="how stage A's supernet becomes ops: argmax of α (DARTS) | perturbation (each edge keeps the op whose removal costs the supernet most validation loss; DARTS-PT)"),
    arch_lr: Optional[float] = typer.Option(None, help="Adam learning rate of the architecture logits α in stage A and the macro sweep (default: the upper learning rate, 5e-4)"),
    critic: Optional[Path] = typer.Option(None, help="a quality critic (safetensors) instead of training one"),
    order: str = typer.Option("second", help="hypergradient: second | first | exact"),
    lower_step: str = typer.Option("simultaneous", help="lower step: simultaneous (reuses the second-order virtual step's gradient: one pass in five fewer) | alternating (after the upper step, as DARTS and the reference code)"),
    stages: str = typer.Option("L,A,T", help="stages to run, e.g. L,A or T"),
    steps_l: int = typer.Option(200, help="stage L steps"),
    steps_a: int = typer.Option(400, help="stage A steps"),
    arch_warmup: float = typer.Option(0.0, help="fraction of stage A's steps (and of each macro candidate's short search) that train the weights alone, α frozen, before α moves"),
    steps_t: int = typer.Option(2000, help="stage T (final training) steps"),
    crop: Optional[int] = typer.Option(None, help="crop size of the search's batches (stages L, A; an edge network at scale s sees crop/s); default 64, under --macro edge 128"),
    train_crop: Optional[int] = typer.Option(None, help="crop size of stage T's batches; default 128, under --macro edge 256"),
    seed: int = typer.Option(0),
    deterministic: bool = typer.Option(False, help="deterministic algorithms (a resumed run ends identical)"),
    quick: bool = typer.Option(False, help="small supernet and few steps: a full search in minutes on a CPU (sets its own steps, crops and learning rates)"),
    vgg_weights: Optional[Path] = typer.Option(None, help="local VGG19 weights (adds the vgg term)"),
    lpips_weights: Optional[Path] = typer.Option(None, help="local LPIPS weights (adds the lpips term)"),
    lpips_net: Optional[str] = typer.Option(None, help="LPIPS backbone: alex | vgg (default: read off the weight file)"),
    threads: Optional[int] = typer.Option(None, help="torch CPU threads"),
    out: Path = typer.Option(Path("runs/search"), help="run directory"),
    resume: bool = typer.Option(False, help="continue the run in --out (same options)"),
) -> None:
    """Search architecture and loss (stages L, A), then train the result (stage T).

    Data parallel under torchrun: `torchrun --nproc-per-node N -m hbl_edge search ...` (docs/distributed.md).
    """
    from .search.config import SearchConfig, quick_overrides
    from .search.pareto import parse_budgets, parse_references

    budgets = parse_budgets(latency_budget)
    references = parse_references(reference)
    if references and len(budgets) < 2:
        raise ConfigError("--reference marks points on a Pareto sweep: give several --latency-budget values (8,16,32)")
    cfg = SearchConfig(
        task=task, data=data, test_data=test_data, out=str(out), stages=stages, space=space, device=device, backend=backend,
        latency_table=str(latency_table) if latency_table else None, latency_budget=budgets[0] if budgets else None,
        resolution=parse_resolution(resolution, minimum=4), latency_form=latency_form, latency_beta=latency_beta,
        latency_threads=latency_threads, latency_spinning=latency_spinning,
        latency_mu=latency_mu, order=order,
        objective=objective, critic=str(critic) if critic else None, steps_l=steps_l, steps_a=steps_a, arch_warmup=arch_warmup,
        steps_t=steps_t, crop=crop, train_crop=train_crop, seed=seed, deterministic=deterministic, quick=quick,
        threads=threads,
        vgg_weights=str(vgg_weights) if vgg_weights else None, lpips_weights=str(lpips_weights) if lpips_weights else None,
        lpips_net=lpips_net, hnu_norm=hnu_norm, lower_step=lower_step, lambda_lr=lambda_lr, arch_lr=arch_lr, selection=selection,
        loss_check=None if loss_check is None else tuple(x.strip() for x in loss_check.split(";")
                                                       if x.strip() and x.strip() != "none"),
        terms=tuple(t.strip() for t in terms.split(",") if t.strip()) if terms is not None else None,
    )
    if macro is not None:
        from .search.macro import parse_refine, parse_widths

        try:
            cfg.macro_scales = tuple(int(v) for v in macro_scales.split(",") if v.strip())
            cfg.macro_units = tuple(int(v) for v in macro_units.split(",") if v.strip())
        except ValueError:
            raise ConfigError("--macro-scales and --macro-units take integers separated by commas, e.g. 2,4,8") from None
        cfg.macro, cfg.macro_widths, cfg.macro_refine = macro, parse_widths(macro_widths), (
            None if macro_refine is None else parse_refine(macro_refine))
        cfg.macro_steps = macro_steps
    if quick:
        for k, v in quick_overrides(cfg.macro).items():
            setattr(cfg, k, v)
    if macro_train_steps is not None:
        cfg.macro_train_steps = macro_train_steps
    if macro_proxy_seeds is not None:
        cfg.macro_proxy_seeds = macro_proxy_seeds
    if len(budgets) > 1:
        from .search.pareto import run_pareto

        if not _is_main_process():
            raise ConfigError("a Pareto sweep (several --latency-budget values) runs as one process; run it without torchrun")
        res = run_pareto(cfg, budgets, references, resume=resume)
        table = Table(title=f"Pareto sweep {out}")
        for col in ("budget ms", "measured ms", "changes", "PSNR", "SSIM", "genotype"):
            table.add_column(col)
        for p in res["points"]:
            fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
            table.add_row(f"{p['budget_ms']:g}", fmt(p.get("measured_ms"), ".1f"), str(p.get("changes", "-")),
                          fmt(p.get("psnr"), ".2f"), fmt(p.get("ssim"), ".3f"), (p.get("genotype") or "")[:60])
        console.print(table)
        console.print(f"files: {out}/pareto.json, {out}/plots/pareto.png, {out}/budget-*ms/")
        return
    if not _is_main_process():
        from .search.driver import run_search

        run_search(cfg, resume=resume)
        return
    result = run_search_with_progress(cfg, resume=resume)
    if result.interrupted:
        raise typer.Exit(130)
    print_search_summary(out)


def run_search_with_progress(cfg, resume: bool = False):
    from .search.driver import run_search

    bars: dict = {}
    with _progress() as prog:

        def on_step(stage: str, step: int, total: int, rec: dict) -> None:
            if stage not in bars:
                bars[stage] = prog.add_task(f"stage {stage}", total=total, status="")
            if stage == "L":
                lam = " ".join(f"{k}={v:.2f}" for k, v in rec.get("lambda", {}).items())
                status = f"upper {rec['upper_loss']:.4f} λ {lam}"
            elif stage == "A":
                lat = f" E[lat] {rec['expected_latency_ms']:.1f} ms" if "expected_latency_ms" in rec else ""
                up = "warm-up (α frozen)" if rec.get("upper_loss") is None else f"upper {rec['upper_loss']:.4f}"
                status = f"{up}{lat} | {rec['genotype'][:60]}"
            else:
                status = f"loss {rec['loss']:.4f}" + (f" val {rec['val_psnr']:.2f} dB" if "val_psnr" in rec else "")
            prog.update(bars[stage], completed=step, status=status)

        return run_search(cfg, resume=resume, progress=on_step)


def print_search_summary(out: Path) -> None:
    from .search.driver import search_summary

    info = search_summary(out)
    table = Table(title=f"search run {out}", show_header=False)
    if "loss" in info:
        table.add_row("loss λ*", ", ".join(f"{k}={v:.3g}" for k, v in info["loss"].items()))
    if "genotype" in info:
        table.add_row("genotype", info["genotype"])
    lat = info.get("latency")
    if lat:
        measured = f", measured {lat['measured_ms']:.1f} ms" if lat.get("measured_ms") else ""
        table.add_row("latency", f"predicted {lat['predicted_ms']:.1f} ms{measured} (budget {lat['budget_ms']} ms; {lat['model']})")
    if "test" in info:
        t = info["test"]
        table.add_row("test", f"PSNR {t['psnr']:.2f} dB (input {t['input_psnr']:.2f}), SSIM {t['ssim']:.3f} (input {t['input_ssim']:.3f})")
    console.print(table)
    console.print(f"files: {out}/loss.json, {out}/genotype.json, {out}/model/ (bundle), {out}/plots/")


@app.command()
@user_errors
def profile(
    device: str = typer.Option("cpu", help="cpu | cuda | jetson | a Jetson preset (must be the machine this runs on)"),
    backend: str = typer.Option("onnxruntime", help="onnxruntime | torch | tensorrt"),
    resolution: str = typer.Option("1280x720", help="WxH"),
    space: str = typer.Option("paper", help="search space to profile"),
    channels: str = typer.Option("16,32", help="C1,C2"),
    units: int = typer.Option(7, help="HNUs (for the fixed part and the calibration networks)"),
    out: Path = typer.Option(Path("latency.json"), help="where to write the table"),
    repeats: int = typer.Option(15, help="timed consecutive runs per graph and round"),
    warmup: int = typer.Option(3, help="untimed runs before each block of timed runs"),
    rounds: int = typer.Option(2, help="rounds over all graphs (every other one reversed)"),
    dtype: str = typer.Option("float32", help="float32 | float16"),
    threads: Optional[int] = typer.Option(None, help="intra-op threads of the deployed runner (default: the backend's, as OrtRunner)"),
    allow_spinning: Optional[bool] = typer.Option(
        None, "--allow-spinning/--no-allow-spinning",
        help="onnxruntime intra-op spinning of the deployed runner (default: onnxruntime's, on)"),
    calibrate: int = typer.Option(15, help="fit the whole-network model on N calibration networks (0: none)"),
    estimate: bool = typer.Option(False, help="write a roofline estimate from published specs instead of measuring"),
    edge: Optional[str] = typer.Option(None, help="an edge genotype (hbl-genotype/2): profile its inner network at 1/s and measure its full-resolution parts (an edge latency model for `genotype latency`)"),
) -> None:
    """Measure the latency of every op of a space on this machine (the table the search uses)."""
    from .search.profiler import estimate_table
    from .search.profiler import profile as run_profile

    if edge is not None:
        from .search.edge_latency import profile_edge

        with _progress() as prog:
            bars: dict = {}

            def on_edge_progress(phase: str, done: int, total: int) -> None:
                if phase not in bars:
                    bars[phase] = prog.add_task(phase, total=total, status="")
                prog.update(bars[phase], completed=done, total=total)

            model = profile_edge(edge, parse_resolution(resolution, minimum=4), device=device, backend=backend,
                                 threads=threads, allow_spinning=allow_spinning, repeats=repeats,
                                 calibrate=calibrate, out=out, progress=on_edge_progress)
        console.print(f"[green]wrote[/] {out}: {model.label}")
        return

    try:
        chans = tuple(int(c) for c in channels.split(","))
    except ValueError:
        raise ConfigError(f"--channels takes C1,C2 such as 16,32, got {channels!r}") from None
    res = parse_resolution(resolution, minimum=4)
    if estimate:
        table = estimate_table(device, res, space, chans, units=units, out=out)
    else:
        with _progress() as prog:
            bars: dict = {}

            def on_progress(phase: str, done: int, total: int) -> None:
                if phase not in bars:
                    bars[phase] = prog.add_task(phase, total=total, status="")
                prog.update(bars[phase], completed=done, total=total)

            table = run_profile(device, backend, res, space, chans, out=out, repeats=repeats, warmup=warmup,
                                rounds=rounds, dtype=dtype, threads=threads, allow_spinning=allow_spinning,
                                units=units, calibrate=calibrate, progress=on_progress)
    console.print(f"[green]wrote[/] {out}: {len(table.entries)} op entries; {table.label}")
    noisy = (table.settings or {}).get("noisy")
    if noisy:
        console.print(f"[yellow]{noisy} graph(s) stayed noisy (runs spread > 15 %): the machine was busy; "
                      "profile again on a quieter machine for a steadier table[/]")
    cal = table.calibration
    if cal:
        loo = (cal.get("loo") or {}).get("rel_rmse_pct")
        check = f", leave-one-out error {loo:.1f} % rms" if loo is not None else ""
        console.print(f"whole-network model: {cal['kind']} fit on {cal['n']} networks{check}")


genotype_app = typer.Typer(help="Inspect and validate genotypes.", no_args_is_help=True)
app.add_typer(genotype_app, name="genotype")


@genotype_app.command("show")
@user_errors
def genotype_show(spec: str = typer.Argument(..., help="built-in name or genotype.json path")) -> None:
    """Print a genotype as JSON (validates it on the way)."""
    import json

    from .genotype import load_genotype
    from .network import Network, count_parameters

    g = load_genotype(spec)
    console.print_json(json.dumps(g.to_dict()))
    console.print(f"{count_parameters(Network.from_genotype(g)):,} parameters; {g.summary()}")


@genotype_app.command("list")
def genotype_list() -> None:
    """List the built-in genotypes."""
    from .genotype import NAMED_GENOTYPES

    for name, g in NAMED_GENOTYPES.items():
        console.print(f"{name}: {g.summary()}")


@genotype_app.command("latency")
@user_errors
def genotype_latency(
    spec: str = typer.Argument(..., help="built-in name or genotype.json path"),
    latency_table: Path = typer.Option(..., "--latency-table", help="a table from `hbl-edge profile` (or --estimate)"),
) -> None:
    """Print the predicted whole-network latency of a genotype as JSON (check it against your own timing loop)."""
    import json

    from .search.latency import LatencyModel

    from .genotype import load_genotype
    from .search.edge_latency import EdgeLatencyModel, is_edge_model_file

    g = load_genotype(spec)
    if is_edge_model_file(latency_table):
        print(json.dumps(EdgeLatencyModel.load(latency_table).describe(g), indent=2))
        return
    if g.macro is not None:
        raise ConfigError(f"{spec} is an edge genotype: price it with an edge latency model "
                          f"(`hbl-edge profile --edge {spec} --resolution WxH --out edge_latency.json`)")
    model = LatencyModel(latency_table)
    print(json.dumps(model.describe(g), indent=2))


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
