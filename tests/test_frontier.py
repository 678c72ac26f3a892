"""The frontier's choice of the default scheme and its report, from run records and an attack record."""

from __future__ import annotations

import json
from pathlib import Path

from encseg.engine.experiment import BUDGETS, plan_runs
from encseg.engine.frontier import CANDIDATES, choose_default, frontier_rows, load_privacy, write_frontier_report
from encseg.models import SETRConfig


def _records(mious: dict[str, float], plain: float = 40.0) -> list[dict]:
    recs = [{"name": "setr-plain", "model": "SETR", "train": "none", "scheme": None,
             "results": [{"test": "none", "scheme": None, "miou": plain}]}]
    for i, (scheme, miou) in enumerate(mious.items()):
        recs.append({"name": f"run{i}", "model": f"model {i}", "train": "per-image", "scheme": scheme,
                     "results": [{"test": "per-image", "scheme": scheme, "miou": miou}]})
    return recs


def test_default_is_the_most_accurate_scheme_that_passes_every_goal(tmp_path):
    recs = _records({"bs-np-cs": 30.0, "bs-psb-np-cs": 20.0, "bs-psb4-np-cs": 25.0})
    priv = tmp_path / "results.json"
    priv.write_text(json.dumps({"schemes": [
        {"scheme": "bs-np-cs", "goals": {"direct": False, "neighbour": False}},
        {"scheme": "bs-psb-np-cs", "goals": {"direct": True, "neighbour": True}},
        {"scheme": "bs-psb4-np-cs", "goals": {"direct": True, "neighbour": False}},
    ]}))
    rows = frontier_rows(recs, load_privacy(priv))
    best = choose_default(rows)
    assert best["scheme"] == "bs-psb-np-cs" and abs(best["ratio"] - 0.5) < 1e-9
    assert {r["scheme"]: r["passes"] for r in rows if r["miou"] is not None} == {
        "bs-np-cs": False, "bs-psb-np-cs": True, "bs-psb4-np-cs": False}
    assert choose_default(frontier_rows(recs, {})) is None  # no attack record: no choice
    fails = [dict(r, passes=False) for r in rows]
    fallback = choose_default(fails)  # nobody meets every goal: the one meeting most, marked as such
    assert fallback["scheme"] == "bs-psb-np-cs" and fallback["all_goals"] is False


def test_report_and_chart_are_written_with_every_scheme(tmp_path):
    budget = BUDGETS["cpu-frontier"]
    runs = plan_runs(budget, tmp_path / "data", tmp_path / "runs")
    recs = [{"name": r.name, "model": r.model, "train": r.train, "scheme": r.scheme, "steps": r.cfg.run.steps,
             "train_seconds": 1.0, "eval_seconds": 1.0, "config": r.cfg.to_dict(),
             "results": [{"test": m, "scheme": s, "miou": 10.0 + i} for i, (m, s) in enumerate(r.evals)]} for r in runs]
    md, png = tmp_path / "results.md", tmp_path / "results.png"
    write_frontier_report(budget, recs, tmp_path / "data", md, png, tmp_path / "none.json", "wall", [])
    text = md.read_text()
    assert "not Cityscapes" in text and "No attack record" in text
    for scheme in ("np-cs", "bs-np-cs", "bs-psb-np-cs", "bs-ps4-np-cs"):
        assert f"`{scheme}`" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rescore_rebuilds_the_report_from_frontier_json_against_another_record(tmp_path):
    import pytest

    from encseg.engine.experiment import run_experiment
    from encseg.errors import UserError

    budget = BUDGETS["cpu-frontier"]
    runs = plan_runs(budget, tmp_path / "data", tmp_path / "runs")
    recs = [{"name": r.name, "model": r.model, "train": r.train, "scheme": r.scheme, "steps": r.cfg.run.steps,
             "train_seconds": 1.0, "config": r.cfg.to_dict(),
             "results": [{"test": m, "scheme": s, "miou": 10.0 + i} for i, (m, s) in enumerate(r.evals)]} for r in runs]
    first = tmp_path / "first" / "results.md"
    first.parent.mkdir()
    write_frontier_report(budget, recs, tmp_path / "data", first, first.with_suffix(".png"), tmp_path / "none.json",
                          "the wall line", [])
    saved = json.loads((first.parent / "frontier.json").read_text())
    assert saved["default"] is None and len(saved["records"]) == len(runs)
    priv = tmp_path / "record.json"
    priv.write_text(json.dumps({"schemes": [
        {"scheme": "bs-np-cs", "goals": {"direct": False}}, {"scheme": "bs-psb-np-cs", "goals": {"direct": True}}]}))
    md = tmp_path / "again" / "results.md"
    md.parent.mkdir()
    run_experiment("cpu-frontier", tmp_path / "nothing", None, md, md.with_suffix(".png"), privacy=priv,
                   rescore=first.parent / "frontier.json")
    again = json.loads((md.parent / "frontier.json").read_text())
    assert again["default"]["scheme"] == "bs-psb-np-cs" and again["records"] == saved["records"]
    text = md.read_text()
    assert "the wall line" in text and "--rescore" in text and "**Default scheme: `bs-psb-np-cs`**" in text
    assert not (tmp_path / "nothing").exists()  # nothing trained, no run folder made
    with pytest.raises(UserError, match="not a frontier.json"):
        run_experiment("cpu-frontier", tmp_path, None, md, md.with_suffix(".png"), privacy=priv, rescore=priv)
    with pytest.raises(UserError, match="no attack record"):
        run_experiment("cpu-frontier", tmp_path, None, md, md.with_suffix(".png"), privacy=tmp_path / "none.json",
                       rescore=first.parent / "frontier.json")


def test_every_frontier_model_claims_the_schemes_it_is_trained_and_scored_on():
    for c in CANDIDATES:
        if c.train != "per-image":
            continue
        claims = set(SETRConfig(encoder="vit-tiny-6", img_size=(128, 256), **c.model).invariances)
        for _, scheme in c.evals:
            steps = set(scheme.partition("/")[0].split("-"))
            assert steps <= claims, (c.name, scheme, sorted(claims))


def test_experiment_options_are_checked_before_any_work(run_cli, tmp_path):
    for args, says in ((("--parallel", "0"), "--parallel must be at least 1"),
                       (("--refine-steps", "-1"), "--refine-steps must be 0 or more")):  # fmt: skip
        code, _, err = run_cli("experiment", "--budget", "cpu-frontier", "--out", tmp_path / "runs", "--data",
                               tmp_path / "data", *args)  # fmt: skip
        assert code == 2 and err.startswith("error:") and says in err and "\n" not in err.strip()
    assert not (tmp_path / "data").exists() and not (tmp_path / "runs").exists()
