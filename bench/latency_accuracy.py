"""Latency prediction accuracy against an independent measurement, on random genotypes.

What it does, on this machine (device ``cpu``, onnxruntime's CPU provider):

1. makes the latency table the way ``hbl-edge search`` does for ``--shape`` (``profile`` with
   the search's repeats and calibration size, at ``--resolution`` and ``--threads``);
2. draws ``--genotypes`` random genotypes (seeds 0…; each edge uniform over the ops that fit it;
   the calibration networks are drawn by the profiler from its own seeds and never evaluated);
3. exports each network BatchNorm-folded (``hbl_edge.export.export_onnx``) and times it with the
   **independent timer of this file**, which shares no code with the package's profiler or its
   deployed-runner timing: a fresh ``onnxruntime.InferenceSession`` per network and round,
   3 warm-up runs, the median of 15 consecutive ``session.run`` calls on a host array, two
   rounds over all networks (the second in reverse order); the measurement is the mean of the
   two round medians;
4. compares ``LatencyModel(table).predict(genotype)`` with it: share within ±10 % / ±5 %,
   median absolute and mean signed error, rank correlation, and the measurement's own
   round-to-round difference (its noise floor);
5. times the table's calibration networks again with the same independent timer, in the same
   rounds: the median ratio (independent now / profiler's calibration then) is the **drift**,
   what changed between calibrating and checking (machine load, or a bias of the package's
   deployed-runner timing against this one). Accuracy with predictions scaled by the drift, and
   the error of a plain sum of ops timed alone (``isolated_ops_sum``, from the table's 1-block
   graphs), are reported beside the plain figures as diagnostics, never instead of them.

``--spinning-study`` instead measures, on a few networks, what onnxruntime's intra-op spinning
does: consecutive runs with spinning on and off (default threads and 1 thread), and the old
"two runs at a time rotating over live sessions" pattern, interleaved in rounds.

Machine load (load average, /proc/pressure/cpu) is recorded before and after. Run it alone::

    flock /tmp/hbl-timing.lock nice -n -10 python bench/latency_accuracy.py --shape full --threads default
    flock /tmp/hbl-timing.lock nice -n -10 python bench/latency_accuracy.py --shape quick --threads 1

``--shape`` is the hook for further macro-architectures: add an entry to ``SHAPES``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

#: Network shapes and the profiling settings ``hbl-edge search`` uses for each (driver._latency_model).
SHAPES: dict[str, dict[str, Any]] = {
    "full": {"channels": (16, 32), "units": 7, "repeats": 15, "calibrate": 15},
    "quick": {"channels": (8, 16), "units": 3, "repeats": 10, "calibrate": 8},
    # "edge": the edge macro-architecture (DESIGN §10) joins here once its genotype and network exist.
}


# ---------------------------------------------------------------------------------------------
# The independent timer (deliberately written here, not imported from hbl_edge)
# ---------------------------------------------------------------------------------------------
def load_now() -> dict[str, Any]:
    out: dict[str, Any] = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "loadavg": list(os.getloadavg())}
    try:
        out["cpu_pressure"] = Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except OSError:
        pass
    return out


def _session(path: Path, threads: int | None, allow_spinning: bool | None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = threads
    if allow_spinning is not None:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def time_consecutively(path: Path, x: np.ndarray, threads: int | None, allow_spinning: bool | None = None,
                       warmup: int = 3, repeats: int = 15) -> list[float]:
    """One fresh session: ``warmup`` runs, then ``repeats`` consecutive timed runs (ms)."""
    sess = _session(path, threads, allow_spinning)
    name = sess.get_inputs()[0].name
    for _ in range(warmup):
        sess.run(None, {name: x})
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(None, {name: x})
        times.append((time.perf_counter() - t0) * 1e3)
    del sess
    return times


def time_independently(paths: Sequence[Path], x: np.ndarray, threads: int | None, allow_spinning: bool | None = None,
                       warmup: int = 3, repeats: int = 15, rounds: int = 2) -> list[dict[str, Any]]:
    """Per network: the round medians (rounds alternate the order) and their mean (ms)."""
    per: list[list[float]] = [[] for _ in paths]
    order = list(range(len(paths)))
    for r in range(rounds):
        for i in (order if r % 2 == 0 else order[::-1]):
            per[i].append(statistics.median(time_consecutively(paths[i], x, threads, allow_spinning, warmup, repeats)))
    return [{"ms": float(np.mean(m)), "round_ms": [round(v, 4) for v in m]} for m in per]


def export_all(genotypes: Sequence[Any], where: Path) -> list[Path]:
    """BatchNorm-folded ONNX of each genotype's network (random weights, seed 0)."""
    import torch

    from hbl_edge.export.onnx_export import export_onnx
    from hbl_edge.network import Network

    paths = []
    for i, g in enumerate(genotypes):
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            paths.append(export_onnx(Network(g).eval(), where / f"net{i}", check=False).onnx_path)
    return paths


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------
def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def summarise(pred: Sequence[float], meas: Sequence[float]) -> dict[str, float]:
    err = 100.0 * (np.asarray(pred) - np.asarray(meas)) / np.asarray(meas)
    return {
        "n": int(len(err)),
        "within_10pct": float(np.mean(np.abs(err) <= 10)),
        "within_5pct": float(np.mean(np.abs(err) <= 5)),
        "within_20pct": float(np.mean(np.abs(err) <= 20)),
        "median_abs_pct_error": float(np.median(np.abs(err))),
        "mean_pct_error": float(np.mean(err)),
        "max_abs_pct_error": float(np.max(np.abs(err))),
        "rank_correlation": spearman(pred, meas),
    }


def isolated_table(table: Any) -> Any:
    """The table as an isolated-op profiler would have it: each chained op's 1-block graph, less the empty call.

    A diagnostic only (it is what the table's ``chain_ms[0]`` already holds): how far a plain
    sum of ops timed alone lands from the whole network.
    """
    from hbl_edge.search.latency import LatencyTable

    d = table.to_dict()
    over = float(d["settings"].get("call_overhead_ms", 0.0))
    d["entries"] = [dict(e, ms=max(e["chain_ms"][0] - over, 0.0)) if "chain_ms" in e else e for e in d["entries"]]
    d["calibration"] = None
    return LatencyTable.from_dict(d)


def _threads(spec: str) -> int | None:
    return None if spec == "default" else int(spec)


# ---------------------------------------------------------------------------------------------
# Modes
# ---------------------------------------------------------------------------------------------
def accuracy(args: argparse.Namespace) -> dict[str, Any]:
    from hbl_edge.search.latency import LatencyModel, random_genotype
    from hbl_edge.search.profiler import machine_info, parse_resolution, profile

    shape = SHAPES[args.shape]
    res = parse_resolution(args.resolution)
    threads = _threads(args.threads)
    spinning = {"default": None, "on": True, "off": False}[args.spinning]
    load0 = load_now()
    t0 = time.time()
    table = profile("cpu", "onnxruntime", res, space=args.space, channels=shape["channels"], units=shape["units"],
                    repeats=shape["repeats"], threads=threads, allow_spinning=spinning,
                    calibrate=args.calib if args.calib is not None else shape["calibrate"])
    t_profile = time.time() - t0
    cal = table.calibration or {}
    print(f"profiled {len(table.entries)} ops + {len(table.fixed)} fixed parts, {cal.get('n', 0)} calibration "
          f"networks in {t_profile:.0f} s; model {cal.get('kind')} (leave-one-out "
          f"{(cal.get('loo') or {}).get('rel_rmse_pct')} % rms); {table.settings['noisy']} noisy graph(s)", flush=True)
    Path(args.table).parent.mkdir(parents=True, exist_ok=True)
    table.save(args.table)

    genotypes = [random_genotype(args.space, shape["channels"], shape["units"], seed=s) for s in range(args.genotypes)]
    model = LatencyModel(table)
    pred = [model.predict(g) for g in genotypes]
    raw = [model.predict_raw(g) for g in genotypes]
    alone = LatencyModel(isolated_table(table))
    iso = [alone.predict_raw(g) for g in genotypes]
    cal_rows = cal.get("rows") or []
    cal_gens = []
    if cal_rows:  # the very networks the calibration measured (deterministic in the table and seed)
        from hbl_edge.search.calibration import calibration_genotypes
        from hbl_edge.search.latency import LatencyTable

        plain = LatencyModel(LatencyTable.from_dict({**table.to_dict(), "calibration": None}))
        cal_gens = [g for g, _ in calibration_genotypes(plain, len(cal_rows), cal["seed"])]
        assert [g.summary() for g in cal_gens] == [r["genotype"] for r in cal_rows]
    x = np.random.default_rng(0).random((1, 3, res[1], res[0]), dtype=np.float32)
    load1 = load_now()
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="hbl-latacc-") as tmp:
        paths = export_all(genotypes + cal_gens, Path(tmp))
        both = time_independently(paths, x, threads, spinning, warmup=3, repeats=15, rounds=2)
    meas, cal_meas = both[: len(genotypes)], both[len(genotypes):]
    t_measure = time.time() - t0
    load2 = load_now()
    m = [r["ms"] for r in meas]
    drift = float(np.median([r["ms"] / row["measured_ms"] for r, row in zip(cal_meas, cal_rows)])) if cal_rows else None
    noise = [100.0 * abs(r["round_ms"][0] - r["round_ms"][1]) / r["ms"] for r in meas]
    rows = [
        {"seed": s, "genotype": g.summary(), "predicted_ms": p, "predicted_raw_ms": q, "isolated_sum_ms": i,
         "measured_ms": r["ms"], "round_ms": r["round_ms"], "error_pct": 100.0 * (p - r["ms"]) / r["ms"]}
        for s, g, p, q, i, r in zip(range(args.genotypes), genotypes, pred, raw, iso, meas)
    ]
    return {
        "bench": "latency_accuracy",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info("cpu", "onnxruntime"),
        "load": {"start": load0, "after_profile": load1, "end": load2},
        "settings": {"shape": args.shape, **{k: list(v) if isinstance(v, tuple) else v for k, v in shape.items()},
                     "resolution": list(res), "threads": args.threads, "spinning": args.spinning,
                     "genotypes": args.genotypes, "space": args.space,
                     "backend_versions": table.backend["versions"],
                     "independent_timer": "fresh InferenceSession per network and round, 3 warm-up, median of 15 "
                                          "consecutive runs, 2 rounds (second reversed), mean of round medians"},
        "seconds": {"profile": t_profile, "measure": t_measure},
        "calibration": {k: cal.get(k) for k in ("kind", "scales", "offset_ms", "n", "loo", "rel_rmse_pct", "forms")},
        "results": {"calibrated": summarise(pred, m), "uncalibrated": summarise(raw, m),
                    "isolated_ops_sum": summarise(iso, m)},
        "drift": {"ratio": drift, "what": "median over the calibration networks of (independent timing now) / "
                                          "(the profiler's calibration timing): load change or timing bias",
                  "calibrated_scaled_by_drift": summarise([p * drift for p in pred], m) if drift else None,
                  "calibration_rows": [{"genotype": row["genotype"], "profiler_ms": row["measured_ms"],
                                        "independent_ms": r["ms"], "round_ms": r["round_ms"]}
                                       for r, row in zip(cal_meas, cal_rows)]},
        "measurement_noise": {"median_round_diff_pct": float(np.median(noise)), "max_round_diff_pct": float(np.max(noise))},
        "rows": rows,
    }


def spinning_study(args: argparse.Namespace) -> dict[str, Any]:
    """Consecutive runs with spinning on/off, and the rotating-over-live-sessions pattern."""
    from hbl_edge.search.latency import random_genotype
    from hbl_edge.search.profiler import machine_info, parse_resolution

    shape = SHAPES[args.shape]
    res = parse_resolution(args.resolution)
    x = np.random.default_rng(0).random((1, 3, res[1], res[0]), dtype=np.float32)
    genotypes = [random_genotype(args.space, shape["channels"], shape["units"], seed=s) for s in range(args.genotypes)]
    configs = [(th, sp) for th in (None, 1) for sp in (True, False)]
    load0 = load_now()
    out: dict[str, Any] = {"consecutive": {}, "rotating": {}}
    with tempfile.TemporaryDirectory(prefix="hbl-spin-") as tmp:
        paths = export_all(genotypes, Path(tmp))
        cons: dict[tuple, list[list[float]]] = {c: [[] for _ in paths] for c in configs}
        rot: dict[bool, list[list[float]]] = {sp: [[] for _ in paths] for sp in (True, False)}
        for r in range(args.rounds):
            cfgs = configs if r % 2 == 0 else configs[::-1]
            for th, sp in cfgs:  # consecutive: one live session at a time
                for i, p in enumerate(paths):
                    cons[(th, sp)][i].append(statistics.median(time_consecutively(p, x, th, sp)))
            for sp in ((True, False) if r % 2 == 0 else (False, True)):  # all sessions alive, two runs each in turn
                sessions = [_session(p, None, sp) for p in paths]
                names = [s.get_inputs()[0].name for s in sessions]
                for s, n in zip(sessions, names):
                    for _ in range(3):
                        s.run(None, {n: x})
                runs: list[list[float]] = [[] for _ in paths]
                for _ in range(8):
                    for i, (s, n) in enumerate(zip(sessions, names)):
                        for _ in range(2):
                            t0 = time.perf_counter()
                            s.run(None, {n: x})
                            runs[i].append((time.perf_counter() - t0) * 1e3)
                del sessions
                for i in range(len(paths)):
                    rot[sp][i].append(statistics.median(runs[i]))
    key = lambda th, sp: f"threads={th or 'default'},spinning={'on' if sp else 'off'}"  # noqa: E731
    for (th, sp), per in cons.items():
        out["consecutive"][key(th, sp)] = [float(np.median(v)) for v in per]
    for sp, per in rot.items():
        out["rotating"][key(None, sp)] = [float(np.median(v)) for v in per]
    base = out["consecutive"][key(None, True)]
    ratios = {name: float(np.median(np.asarray(v) / np.asarray(base))) for d in ("consecutive", "rotating")
              for name, v in ((f"{d}:{k}", vals) for k, vals in out[d].items())}
    return {
        "bench": "latency_spinning", "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info("cpu", "onnxruntime"), "load": {"start": load0, "end": load_now()},
        "settings": {"shape": args.shape, "resolution": list(res), "genotypes": args.genotypes, "rounds": args.rounds,
                     "consecutive": "fresh session, 3 warm-up, median of 15 consecutive runs, per round",
                     "rotating": "all sessions alive, 3 warm-up each, then 8 passes of 2 runs per network in turn"},
        "ms": out,
        "median_ratio_to_consecutive_default_spinning": ratios,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="full", choices=sorted(SHAPES), help="network shape (and its search settings)")
    ap.add_argument("--resolution", default="640x360")
    ap.add_argument("--space", default="paper")
    ap.add_argument("--threads", default="default", help="'default' (onnxruntime's, as OrtRunner) or a number")
    ap.add_argument("--spinning", default="default", choices=["default", "on", "off"])
    ap.add_argument("--genotypes", type=int, default=30, help="evaluated random genotypes (seeds 0…)")
    ap.add_argument("--calib", type=int, default=None, help="calibration networks (default: as the search)")
    ap.add_argument("--spinning-study", action="store_true", help="measure spinning on/off instead of accuracy")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the spinning study")
    ap.add_argument("--json", default=None)
    ap.add_argument("--table", default=None)
    args = ap.parse_args(argv)
    tag = f"{args.shape}_{args.resolution}_t{args.threads}"
    if args.spinning_study:
        result = spinning_study(args)
        path = Path(args.json or f"bench/results/latency_spinning_{tag}.json")
    else:
        args.table = args.table or f"bench/results/latency_table_{tag}.json"
        result = accuracy(args)
        path = Path(args.json or f"bench/results/latency_accuracy_{tag}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=float) + "\n")
    if args.spinning_study:
        for k, v in result["median_ratio_to_consecutive_default_spinning"].items():
            print(f"{k:<55} {v:6.2f}×")
    else:
        print(f"\n{result['machine']['cpu']} ({result['machine']['cpu_cores']} cores), onnxruntime "
              f"{result['settings']['backend_versions']}, {args.resolution}, shape {args.shape}, threads {args.threads}")
        print(f"load average start {result['load']['start']['loadavg']}, end {result['load']['end']['loadavg']}; "
              f"measurement round-to-round difference median {result['measurement_noise']['median_round_diff_pct']:.1f} %")
        if result["drift"]["ratio"]:
            print(f"drift (independent / profiler's timing of the calibration networks): {result['drift']['ratio']:.3f}")
        shown = dict(result["results"])
        if result["drift"]["calibrated_scaled_by_drift"]:
            shown["× drift"] = result["drift"]["calibrated_scaled_by_drift"]
        for name, r in shown.items():
            print(f"{name:<13} ±10 % {r['within_10pct']:4.0%}  ±5 % {r['within_5pct']:4.0%}  median |err| "
                  f"{r['median_abs_pct_error']:5.1f} %  mean err {r['mean_pct_error']:+5.1f} %  max |err| "
                  f"{r['max_abs_pct_error']:5.1f} %  rank corr {r['rank_correlation']:.2f}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
