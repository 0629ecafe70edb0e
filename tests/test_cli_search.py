"""`hbl-edge search` and `hbl-edge profile` through the CLI."""

import importlib.util
import json
import sys

from typer.testing import CliRunner

from hbl_edge.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_search_cli_end_to_end_and_resume_refusal(tmp_path, monkeypatch):
    # A tiny supernet through the real CLI: --quick, with the step counts cut further.
    from hbl_edge.search import config

    small = dict(config.quick_overrides(), channels=(4, 8), units=1, steps_l=2, steps_a=2, steps_t=4,
                 crop=32, train_crop=32, critic_steps=4)
    monkeypatch.setattr(config, "quick_overrides", lambda macro=None: small)
    out = tmp_path / "run"
    res = invoke("search", "--quick", "--device", "jetson-orin-nx", "--latency-budget", 10, "--resolution", "64x48",
                 "--out", out)
    assert res.exit_code == 0, res.output
    assert "genotype" in res.output and "ESTIMATE" in res.output
    assert (out / "model" / "model.json").exists()
    saved = json.loads((out / "config.json").read_text())
    assert saved["quick"] is True and saved["units"] == 1 and saved["device"] == "jetson-orin-nx"
    again = invoke("search", "--quick", "--out", out)
    assert again.exit_code == 2 and "already has the output" in again.output


def test_search_cli_user_errors(tmp_path):
    for args, needle in [
        (["--order", "first"], "--order second"),
        (["--stages", "Q"], "--stages takes"),
        (["--resolution", "big"], "WxH"),
        (["--device", "jetson", "--latency-budget", "30"], "latency-table"),
        (["--task", "fog"], "unknown task"),
    ]:
        res = invoke("search", "--out", tmp_path / "r", *args)
        assert res.exit_code == 2, (args, res.output)
        assert needle in res.output and "Traceback" not in res.output


def test_profile_cli(tmp_path, monkeypatch):
    out = tmp_path / "lat.json"
    res = invoke("profile", "--device", "cpu", "--backend", "torch", "--resolution", "32x24", "--channels", "4,8",
                 "--units", 1, "--repeats", 2, "--warmup", 1, "--out", out)
    assert res.exit_code == 0, res.output
    table = json.loads(out.read_text())
    assert table["format"] == "hbl-latency/1" and table["estimate"] is False and table["entries"]
    est = tmp_path / "est.json"
    res = invoke("profile", "--device", "jetson-agx-orin", "--estimate", "--resolution", "64x48", "--out", est)
    assert res.exit_code == 0 and json.loads(est.read_text())["estimate"] is True
    if importlib.util.find_spec("tensorrt") is None:  # the real machine state, where it holds
        res = invoke("profile", "--backend", "tensorrt", "--out", tmp_path / "x.json")
        assert res.exit_code == 2 and "TensorRT is not installed" in res.output
    # everywhere (also where TensorRT is installed): a missing library is one line, exit 2
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    res = invoke("profile", "--backend", "tensorrt", "--out", tmp_path / "y.json")
    assert res.exit_code == 2 and "TensorRT is not installed here; install it" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "y.json").exists()


def test_search_cli_pareto_sweep_and_errors(tmp_path, monkeypatch):
    from hbl_edge.search import config

    small = dict(config.quick_overrides(), channels=(4, 8), units=1, steps_l=2, steps_a=2, steps_t=2,
                 crop=32, train_crop=32, critic_steps=4)
    monkeypatch.setattr(config, "quick_overrides", lambda macro=None: small)
    out = tmp_path / "sweep"
    res = invoke("search", "--quick", "--device", "jetson-orin-nx", "--latency-budget", "10,20", "--resolution", "64x48",
                 "--stages", "L,A", "--reference", "SCI=5:14.8", "--out", out)
    assert res.exit_code == 0, res.output
    saved = json.loads((out / "pareto.json").read_text())
    assert [p["budget_ms"] for p in saved["points"]] == [10.0, 20.0] and saved["references"][0]["name"] == "SCI"
    assert (out / "budget-10ms" / "genotype.json").exists() and (out / "budget-20ms" / "genotype.json").exists()
    for args, needle in [(["--latency-budget", "10,x"], "positive ms"),
                         (["--latency-budget", "10", "--reference", "A=1:2"], "several --latency-budget"),
                         (["--macro", "edge", "--device", "jetson-orin-nx", "--latency-budget", "10"], "--device cpu")]:
        res = invoke("search", "--out", tmp_path / "r", *args)
        assert res.exit_code == 2, (args, res.output)
        assert needle in res.output and "Traceback" not in res.output


def test_search_cli_latency_runner_settings(tmp_path, monkeypatch):
    """--latency-threads / --no-latency-spinning reach the search's config (the table is profiled
    and the derived network measured for that runner); a bad thread count is one line, exit 2."""
    import hbl_edge.cli as cli

    seen = {}

    class Done:
        interrupted = False

    def fake(cfg, resume=False):
        seen["cfg"] = cfg
        return Done()

    monkeypatch.setattr(cli, "run_search_with_progress", fake)
    monkeypatch.setattr(cli, "print_search_summary", lambda out: None)
    res = invoke("search", "--quick", "--out", tmp_path / "r", "--latency-threads", "1", "--no-latency-spinning")
    assert res.exit_code == 0, res.output
    assert seen["cfg"].latency_threads == 1 and seen["cfg"].latency_spinning is False
    res = invoke("search", "--quick", "--out", tmp_path / "r2")
    assert res.exit_code == 0 and seen["cfg"].latency_threads is None and seen["cfg"].latency_spinning is None
    seen["cfg"].validate()
    monkeypatch.setattr(cli, "run_search_with_progress", lambda cfg, resume=False: cfg.validate())
    res = invoke("search", "--quick", "--out", tmp_path / "r3", "--latency-threads", "0")
    assert res.exit_code == 2 and "--latency-threads must be ≥ 1" in res.output and "Traceback" not in res.output
