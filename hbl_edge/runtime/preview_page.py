"""The preview page (one HTML string, no package data): raw | enhanced, a split slider, live stats.

The page polls ``/stats.json`` twice a second and draws FPS, per-stage latency (p50/p99), dropped
and corrupt frames, source gaps, each sink, the model and the backend. The two MJPEG streams
play in ``<img>`` elements; the split view stacks them and clips the enhanced one at the slider.
"""

from __future__ import annotations

import html
from typing import Any

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>hbl-edge preview</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body {{ margin: 0; font: 14px system-ui, sans-serif; background: #111418; color: #e6e6e6; }}
 header {{ display: flex; gap: 1.5em; align-items: baseline; padding: .6em 1em; background: #1b2028; flex-wrap: wrap; }}
 header h1 {{ font-size: 16px; margin: 0; }}
 .badge {{ padding: .15em .6em; border-radius: .8em; background: #2d6a3e; }}
 .badge.waiting {{ background: #8a5a12; }} .badge.ended {{ background: #555; }}
 main {{ padding: 1em; }}
 .views {{ display: flex; gap: 1em; flex-wrap: wrap; }}
 figure {{ margin: 0; flex: 1 1 420px; }} figcaption {{ color: #9aa4b1; margin-bottom: .3em; }}
 img.video {{ width: 100%; display: block; background: #000; image-rendering: auto; }}
 #split {{ position: relative; display: none; width: fit-content; }}
 #split img.video {{ width: auto; max-width: 100%; max-height: 75vh; }}
 #split img.top {{ position: absolute; left: 0; top: 0; }}
 #split .line {{ position: absolute; top: 0; bottom: 0; width: 2px; background: #ffd54a; pointer-events: none; }}
 #waiting {{ display: none; margin: .5em 0; padding: .6em 1em; background: #8a5a12; border-radius: .4em; }}
 table {{ border-collapse: collapse; margin-top: 1em; }} td, th {{ padding: .2em .8em; text-align: right; }}
 th {{ color: #9aa4b1; font-weight: normal; }} td:first-child, th:first-child {{ text-align: left; }}
 .controls {{ margin: .4em 0 .8em; display: flex; gap: 1em; align-items: center; }}
</style></head>
<body>
<header>
 <h1>hbl-edge preview</h1>
 <span>model <b id="model">{model}</b></span>
 <span>backend <b id="backend">{backend}</b></span>
 <span>task <b id="task">{task}</b></span>
 <span>source <b id="source">{source}</b></span>
 <span class="badge" id="state">{state}</span>
</header>
<main>
 <div id="waiting">waiting for source …</div>
 <div class="controls">
  <label><input type="radio" name="view" value="side" checked> side by side</label>
  <label><input type="radio" name="view" value="split"> split</label>
  <input type="range" id="slider" min="0" max="100" value="50" disabled>
 </div>
 <div class="views" id="side">
  <figure><figcaption>raw</figcaption><img class="video" id="raw" src="/raw.mjpg" alt="raw video"></figure>
  <figure><figcaption>enhanced</figcaption><img class="video" id="enhanced" src="/enhanced.mjpg" alt="enhanced video"></figure>
 </div>
 <div id="split"><img class="video" id="split-raw" alt="raw video"><img class="video top" id="split-enh" alt="enhanced video"><div class="line" id="line"></div></div>
 <div id="numbers">
  <span>FPS in <b id="fps-in">–</b> · out <b id="fps-out">–</b></span> ·
  <span>frames <b id="frames">0</b></span> · <span>dropped <b id="dropped">0</b></span> ·
  <span>corrupt <b id="corrupt">0</b></span> · <span>gaps <b id="gaps">0</b></span>
 </div>
 <table id="latency"><thead><tr><th>stage</th><th>p50 ms</th><th>p99 ms</th></tr></thead><tbody></tbody></table>
 <table id="sinks"><thead><tr><th>output</th><th>frames</th><th>dropped</th><th>write p50/p99 ms</th><th>glass p50/p99 ms</th><th>status</th></tr></thead><tbody></tbody></table>
</main>
<script>
const $ = (id) => document.getElementById(id);
const fmt = (s) => s ? s.p50.toFixed(1) + " / " + s.p99.toFixed(1) : "–";
function setView(v) {{
  const split = v === "split";
  $("side").style.display = split ? "none" : "flex";
  $("split").style.display = split ? "block" : "none";
  $("slider").disabled = !split;
  // One pair of MJPEG connections at a time: move the streams to the visible view.
  $("raw").src = split ? "" : "/raw.mjpg"; $("enhanced").src = split ? "" : "/enhanced.mjpg";
  $("split-raw").src = split ? "/raw.mjpg" : ""; $("split-enh").src = split ? "/enhanced.mjpg" : "";
  clip();
}}
function clip() {{
  const x = $("slider").value;
  $("split-enh").style.clipPath = "inset(0 0 0 " + x + "%)";
  $("line").style.left = x + "%";
}}
document.querySelectorAll("input[name=view]").forEach((r) => r.addEventListener("change", () => setView(r.value)));
$("slider").addEventListener("input", clip);
function row(cells) {{ const tr = document.createElement("tr"); for (const c of cells) {{ const td = document.createElement("td"); td.textContent = c; tr.appendChild(td); }} return tr; }}
async function poll() {{
  try {{
    const s = await (await fetch("/stats.json", {{cache: "no-store"}})).json();
    const st = s.state || "starting";
    $("state").textContent = st; $("state").className = "badge " + st;
    const down = st === "waiting" || st === "starting";
    $("waiting").style.display = down ? "block" : "none";
    if (down && s.gaps && s.gaps.current_s != null) $("waiting").textContent = "waiting for source … " + s.gaps.current_s.toFixed(1) + " s";
    else if (down) $("waiting").textContent = "waiting for source …";
    if (s.model) {{ $("backend").textContent = s.model.backend || "–"; $("task").textContent = s.model.task || "–"; }}
    $("fps-in").textContent = s.fps ? s.fps.in.toFixed(1) : "–"; $("fps-out").textContent = s.fps ? s.fps.out.toFixed(1) : "–";
    const f = s.frames || {{}};
    $("frames").textContent = f.out ?? 0; $("dropped").textContent = f.dropped ?? 0; $("corrupt").textContent = f.corrupt ?? 0;
    $("gaps").textContent = s.gaps ? s.gaps.count + " (" + s.gaps.total_s.toFixed(1) + " s)" : "0";
    const lt = $("latency").tBodies[0]; lt.replaceChildren();
    for (const [k, v] of Object.entries(s.latency_ms || {{}})) lt.appendChild(row([k, v ? v.p50.toFixed(1) : "–", v ? v.p99.toFixed(1) : "–"]));
    const sk = $("sinks").tBodies[0]; sk.replaceChildren();
    for (const [k, v] of Object.entries(s.sinks || {{}})) sk.appendChild(row([k, v.written, v.dropped, fmt(v.write_ms), fmt(v.glass_ms), v.failed ? "failed: " + v.failed : "ok"]));
  }} catch (e) {{ $("state").textContent = "preview server gone"; $("state").className = "badge ended"; }}
}}
setInterval(poll, 500); poll();
</script>
</body></html>
"""


def page(info: dict[str, Any]) -> str:
    """The page, with the model, backend, task and source filled in from a stats snapshot."""
    model = info.get("model") or {}
    source = info.get("source") or {}

    def esc(v: Any) -> str:
        return html.escape(str(v if v not in (None, "") else "–"))

    return _PAGE.format(model=esc(model.get("model")), backend=esc(model.get("backend")), task=esc(model.get("task")),
                        source=esc(source.get("uri")), state=esc(info.get("state", "starting")))


__all__ = ["page"]
