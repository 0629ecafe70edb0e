"""``make demo``'s video: the embedded test pictures as a short clip, enhanced by the stream runtime.

The embedded test split (12 degraded strips) is laid side by side into one panorama and a
320×256 window pans across it (``input.mp4``, 15 fps). The stream pipeline (the code
``hbl-edge stream`` runs: file source → model → mp4 sink) then writes ``before_after.mp4``:
input | enhanced, side by side. Last, the command that opens the live preview on that clip.
Needs PyAV (the ``video`` extra); without it the demo says so and goes on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

WINDOW = (320, 256)  # (width, height) of the panning view; the strips are 256 high
STEP_PX = 6
FPS = 15
GAP_PX = 16


def panorama(task: str) -> np.ndarray:
    """The embedded test inputs of ``task`` side by side, H×W×3 uint8 (their common height)."""
    from .data import open_dataset

    src = open_dataset("embedded", task, "test")
    strips = [src.load(i)[1] for i in range(len(src))]
    h = min(s.shape[0] for s in strips)
    pano = np.concatenate([s[:h] for s in strips], axis=1)
    return np.clip(np.rint(pano * 255), 0, 255).astype(np.uint8)


def pan_frames(pano: np.ndarray, window: tuple[int, int] = WINDOW, step: int = STEP_PX) -> list[np.ndarray]:
    """A window of ``window`` (w, h) moving left to right across ``pano`` by ``step`` px per frame."""
    w, h = window
    h = min(h, pano.shape[0] - pano.shape[0] % 2)
    w = min(w, pano.shape[1] - pano.shape[1] % 2)
    return [np.ascontiguousarray(pano[:h, x:x + w]) for x in range(0, pano.shape[1] - w + 1, step)]


class SideBySide:
    """A processor for the pipeline: input | gap | the model's output, one frame each."""

    def __init__(self, enhancer: Any) -> None:
        self.enhancer = enhancer
        self.resized = 0

    def describe(self) -> dict[str, Any]:
        return self.enhancer.describe()

    def process(self, images: Sequence[np.ndarray], temporal: Any = None) -> list[np.ndarray]:
        outs = self.enhancer.process(images, temporal)
        self.resized = self.enhancer.resized
        gap = np.full((images[0].shape[0], GAP_PX, 3), 255, np.uint8)
        return [np.concatenate([i, gap, o], axis=1) for i, o in zip(images, outs)]


def write_demo_video(out: str | Path, bundle: str | Path, task: str, console: Any) -> dict[str, Any] | None:
    """Write ``out/video/input.mp4`` and ``out/video/before_after.mp4``; print how to preview the clip."""
    from importlib.util import find_spec

    out, bundle = Path(out), Path(bundle)
    if find_spec("av") is None:
        console.print("  video             skipped: PyAV is not installed (pip install -e '.[video]')")
        return None
    from .runtime.enhancer import Enhancer
    from .runtime.pipeline import Pipeline, PipelineConfig
    from .runtime.video import VideoOptions, open_sink, open_source

    if not (bundle / "export" / "model.onnx").is_file():
        from .export import export_onnx

        export_onnx(bundle, bundle / "export")
    folder = out / "video"
    folder.mkdir(parents=True, exist_ok=True)
    clip, result = folder / "input.mp4", folder / "before_after.mp4"
    frames = pan_frames(panorama(task))
    opts = VideoOptions(rate=FPS)
    sink = open_sink(str(clip), opts)
    sink.start()
    from .runtime.video.base import Frame

    for i, f in enumerate(frames):
        sink.write(Frame(f, i, pts=i / FPS))
    sink.close()
    with Enhancer(bundle, backend="ort") as enh:
        pipe = Pipeline(open_source(str(clip), VideoOptions()), [open_sink(str(result), VideoOptions())],
                        SideBySide(enh), PipelineConfig(handle_signals=False))
        final = pipe.run()
    seconds = len(frames) / FPS
    console.print(f"  video             {result}  (input | enhanced, {len(frames)} frames, {seconds:.0f} s, "
                  f"{final['fps']['out_avg']:.0f} fps through the stream pipeline)", soft_wrap=True, highlight=False)
    # soft_wrap: the command must stay on one line to be copied
    console.print(f"  live preview      hbl-edge stream {clip} --model {bundle} --input-loop -1 --preview 8080",
                  soft_wrap=True, highlight=False)
    console.print("                    then open http://127.0.0.1:8080/ (raw | enhanced, FPS, latency; Ctrl-C stops)",
                  soft_wrap=True, highlight=False)
    return {"input": str(clip), "before_after": str(result), "frames": len(frames), "fps": FPS}


__all__ = ["SideBySide", "pan_frames", "panorama", "write_demo_video"]
