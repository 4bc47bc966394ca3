"""`write_report`: one self-contained HTML page and a markdown twin, built from the artifacts
of a real (small) study workspace; numbers equal the artifacts; atomic and deterministic."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

import pytest

from sepsisrl.study.report import (
    SECTIONS,
    WARNING,
    ReportError,
    build_blocks,
    load_study,
    section,
    write_report,
)
from tests.browser import BrowserError, find_browser, inspect_html, render_in_browser, scan

GATES = {"evaluable": True, "low_support_max": 0.05, "severe_flags_max": 0}
SELECTED = "iql_sofa_shaped_conservative_safe"
OTHER = "iql_sofa_shaped_default_fast"
PNG = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------- study workspace
def _train(replay: Path, run: Path, algo: str, seed: int) -> str:
    from sepsisrl.rl.config import load_train_config
    from sepsisrl.rl.trainer import train

    cfg = load_train_config(overrides={
        "algo": algo, "seed": seed, "steps": 40, "hidden_sizes": [32, 32], "batch_size": 64,
        "log_every": 20, "checkpoint_every": 20, "threads": 1,
    })  # fmt: skip
    train(replay, cfg, run)
    return run.parent.name + "/" + run.name


def _seed_row(ws: Path, seed: int, run: str, ev: str) -> dict:
    from sepsisrl.study.selection import selection_metrics

    doc = json.loads((ws / ev / "metrics.json").read_text())
    row = {"seed": seed, "run": run, "eval": ev, **selection_metrics(doc, "wdr")}
    row["score"] = row["ci_low"]
    return row


def _candidate(name: str, rows: list[dict], stage: int, rank: int) -> dict:
    keys = ("estimate", "ci_low", "ci_high", "fqe_mean", "ess", "support_mass",
            "low_support_action_rate", "severe_safety_flags", "clinician_safety_flags",
            "score")  # fmt: skip
    agg = {k: (None if any(r[k] is None for r in rows) else sum(r[k] for r in rows) / len(rows))
           for k in keys}  # fmt: skip
    gates = {"evaluable": agg["score"] is not None,
             "low_support": agg["low_support_action_rate"] <= GATES["low_support_max"],
             "severe_flags": agg["severe_safety_flags"] <= GATES["severe_flags_max"]}  # fmt: skip
    return {"name": name, "reward": "sofa_shaped", "lr_regime": name.split("_")[-2],
            "iql_setting": name.split("_")[-1],
            "hyperparameters": {"actor_lr": 5e-05, "expectile": 0.6, "temperature": 2.0},
            "seeds": rows, **agg, "gates": gates, "passed": all(gates.values()),
            "rank": rank, "stage1_rank": rank, "stage": stage}  # fmt: skip


def make_study_workspace(root: Path, n_stays: int = 400) -> Path:
    """A real built workspace with tiny runs, real evaluations and hand-written study files
    (schemas of study/selection.json and study/final.json). Returns the workspace."""
    import torch

    from sepsisrl.dataset.builder import build
    from sepsisrl.dataset.config import load_build_config
    from sepsisrl.ope.behaviour import BehaviourConfig, BehaviourModel
    from sepsisrl.ope.evaluate import EvalConfig, evaluate
    from sepsisrl.ope.fqe import FQEConfig
    from sepsisrl.synth.config import load_synth_config
    from sepsisrl.synth.world import generate_world

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: extra threads only contend
    try:
        synth = load_synth_config(None, {"charting.density": 0, "output.chunk_subjects": n_stays})
        generate_world(root / "raw", n_stays, seed=0, cfg=synth)
        ws = root / "ws"
        build(root / "raw", ws, load_build_config())
        replay = ws / "replay" / "sofa_shaped"
        runs = {
            (SELECTED, 1): _train(replay, ws / "runs" / f"{SELECTED}_seed1", "iql", 1),
            (SELECTED, 2): _train(replay, ws / "runs" / f"{SELECTED}_seed2", "iql", 2),
            (OTHER, 1): _train(replay, ws / "runs" / f"{OTHER}_seed1", "iql", 3),
            ("bc", 1): _train(replay, ws / "runs" / "bc_sofa_shaped_seed1", "bc", 1),
        }
        cfg = EvalConfig(
            bootstrap_resamples=200,
            behaviour=BehaviourConfig(max_epochs=4),
            fqe=FQEConfig(members=2, max_steps=40, min_steps=20, eval_every=20, hidden=(32, 32)),
        )
        behaviour: list[BehaviourModel] = []

        def ev(spec: str, name: str, kind: str, final: bool) -> str:
            rel = f"eval/{name}-{'test' if final else 'validation'}"
            src = str(ws / spec) if kind == "run" else spec
            evaluate(src, replay, ws / rel, kind=kind, final=final, cfg=cfg,
                     behaviour=behaviour[0] if behaviour else None)  # fmt: skip
            if not behaviour:
                behaviour.append(BehaviourModel.load(ws / rel / "behaviour"))
            return rel

        val = {k: ev(r, Path(r).name, "run", False) for k, r in runs.items() if k[0] != "bc"}
        test = [ev(runs[(SELECTED, s)], f"{SELECTED}_seed{s}", "run", True) for s in (1, 2)]
        baselines = [
            {"name": n, "kind": "named", "eval": ev(n, n, "named", True)}
            for n in ("clinician", "no_treatment")
        ]
        bc = runs[("bc", 1)]
        baselines.append({"name": "behaviour_cloning", "kind": "run", "run": bc,
                          "eval": ev(bc, Path(bc).name, "run", True)})  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    rows = {k: _seed_row(ws, k[1], runs[k], v) for k, v in val.items()}
    cands = [
        _candidate(SELECTED, [rows[(SELECTED, 1)], rows[(SELECTED, 2)]], stage=2, rank=1),
        _candidate(OTHER, [rows[(OTHER, 1)]], stage=1, rank=2),
    ]
    from sepsisrl.study.selection import versus_clinicians

    # the fixture has no clinician evaluation on validation: the verdict is undefined
    no_clinicians = {"estimate": None, "ci_low": None, "ci_high": None, "observed_return": None}
    selection = {
        "schema_version": "1", "profile": "tiny-test", "split": "validation",
        "rule": {"description": "validation only; score then gates (test fixture)",
                 "estimator": "wdr", "score": "wdr_ci_low",
                 "gates": GATES, "finalists": 1, "fallback": "fewest failed gates, then score",
                 "versus_clinicians": "a verdict, not a gate (fixture)"},
        "candidates": cands, "finalists": [SELECTED],
        "finalists_passing_stage1": int(cands[0]["passed"]),
        "selected": {"name": SELECTED, "seed": 1, "run": runs[(SELECTED, 1)],
                     "fallback": not cands[0]["passed"],
                     "failed_gates": [g for g, ok in cands[0]["gates"].items() if not ok],
                     "reason": "best score (fixture)",
                     "versus_clinicians": versus_clinicians(cands[0], no_clinicians, "wdr",
                                                            "eval/clinician-validation")},
    }  # fmt: skip
    final = {
        "schema_version": "1", "split": "test",
        "selected": {"name": SELECTED, "seeds": [1, 2],
                     "runs": [runs[(SELECTED, 1)], runs[(SELECTED, 2)]], "evals": test,
                     "exported_seed": 1},
        "baselines": baselines, "release": f"release/sepsisrl-{SELECTED}",
    }  # fmt: skip
    (ws / "study").mkdir()
    (ws / "study" / "selection.json").write_text(json.dumps(selection, indent=2))
    digest = hashlib.sha256((ws / "study" / "selection.json").read_bytes()).hexdigest()
    final["selection_sha256"] = digest
    (ws / "study" / "final.json").write_text(json.dumps(final, indent=2))
    return ws


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, Path]:
    ws = make_study_workspace(tmp_path_factory.mktemp("report"))
    return ws, write_report(ws)


# ------------------------------------------------------------------------- helpers
def _page(report: Path):
    return scan((report / "index.html").read_text(encoding="utf-8"))


def _read(ws: Path, rel: str) -> dict:
    return json.loads((ws / rel).read_text())


# --------------------------------------------------------------------------- tests
def test_report_files_exist(study):
    ws, report = study
    assert report == ws / "report"
    assert (report / "index.html").stat().st_size > 10_000
    md = (report / "report.md").read_text(encoding="utf-8")
    refs = [line.split("](")[1].rstrip(")") for line in md.splitlines() if line.startswith("![")]
    assert len(refs) >= 10
    for ref in refs:  # every figure of the markdown exists next to it, as a PNG
        assert (report / ref).read_bytes()[:8] == PNG, ref
    assert sorted(p.name for p in (report / "figures").iterdir()) == sorted(
        Path(r).name for r in refs
    )
    ev = _read(ws, "study/final.json")["selected"]["evals"][0]  # exported seed 1
    for name in ("clinician", "policy", "difference"):  # the eval's heatmaps, unchanged
        src = (ws / ev / "figures" / f"actions_{name}.png").read_bytes()
        assert (report / "figures" / f"selected_actions_{name}.png").read_bytes() == src
        assert base64.b64encode(src).decode() in (report / "index.html").read_text()


def test_html_is_self_contained(study):
    _, report = study
    page = _page(report)
    assert len(page.images) >= 10
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1], validate=True)[:8] == PNG
    assert page.external == []
    assert "script" not in page.tags and "link" not in page.tags
    text = (report / "index.html").read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text
    assert inspect_html(text)["self_contained"]


def test_research_only_warning_at_the_top_of_both(study):
    _, report = study
    md = (report / "report.md").read_text(encoding="utf-8")
    page = (report / "index.html").read_text(encoding="utf-8")
    assert "RESEARCH ONLY — NOT FOR CLINICAL USE" in WARNING
    assert WARNING in md.split("\n## ")[0]  # before the first section
    assert WARNING in page.split("<h2")[0]
    assert 'class="warning"' in page.split("<h2")[0]


def test_every_section_heading_is_present_in_order(study):
    _, report = study
    md = (report / "report.md").read_text(encoding="utf-8")
    page = (report / "index.html").read_text(encoding="utf-8")
    assert md.startswith("# sepsisrl study report\n")
    positions = [md.index(f"\n## {s.title}\n") for s in SECTIONS]
    assert positions == sorted(positions)
    for s in SECTIONS:
        assert f">{s.title}</h2>" in page.replace("&amp;", "&")
    assert len({s.name for s in SECTIONS}) == len(SECTIONS) == 14


def test_a_section_is_built_by_its_name(study):
    ws, _ = study
    st = load_study(ws)
    blocks = build_blocks(st, ("actions", "truth"))
    titles = [b.text for b in blocks if getattr(b, "level", None) == 2]
    assert titles == [section("actions").title, section("truth").title]
    assert any(getattr(b, "key", None) == "actions_logged" for b in blocks)
    notes = [b.text for b in section("truth").build(st) if getattr(b, "kind", None) == "note"]
    assert notes == ["No truth: the truth phase was disabled (truth.enabled: false)."]
    with pytest.raises(KeyError, match="no report section 'action'; known: study, cohort"):
        section("action")


def test_the_action_grid_comes_from_the_replay_meta(study, tmp_path):
    """The logged-action heatmap and its text follow the replay's grid, not a fixed 5 x 5."""
    ws, _ = study
    st = load_study(ws)
    grid = st.action_grid()
    meta = st.replay_meta()
    assert (len(grid.vaso), len(grid.fluid)) == (5, 5) and grid.labels == meta.action_labels
    text = [b.text for b in section("actions").build(st) if getattr(b, "kind", None) == "p"]
    assert text[0] == "Action = 5 × vasopressor bin + IV fluid bin (25 actions)."
    # a 2 x 3 grid (an external dataset's): the same section reads it from the meta
    small = {"n_actions": 6, "action_labels": [f"{v}×{f}" for v in ("v0", "v1")
                                               for f in ("f0", "f1", "f2")]}  # fmt: skip
    for key, value in small.items():  # the study's meta is read once: patch the cached copy
        setattr(st.replay_meta(), key, value)
    counts = {lab: i + 1 for i, lab in enumerate(small["action_labels"])}
    st.json("actions/audit.json")["action_counts"] = counts
    blocks = section("actions").build(st)
    assert blocks[0].text == "Action = 3 × vasopressor bin + IV fluid bin (6 actions)."
    assert any(getattr(b, "key", None) == "actions_logged" for b in blocks)
    stats = next(b for b in blocks if getattr(b, "key", None) == "action-stats")
    assert stats.rows[0] == ("Logged decisions", "21")
    st.replay_meta().n_actions = 25  # labels and n_actions disagree: an error naming both
    with pytest.raises(ReportError, match=r"meta\.json 'action_labels' \(6\) and 'n_actions'"):
        st.action_grid()
    st.replay_meta().action_labels = None
    with pytest.raises(ReportError, match=r"meta\.json has no 'action_labels'"):
        st.action_grid()


def test_cohort_flow_numbers_equal_the_audit(study):
    ws, report = study
    audit = _read(ws, "cohort/audit.json")
    rows = _page(report).tables["cohort-flow"][1:]
    assert len(rows) == len(audit["flow"])
    for row, step in zip(rows, audit["flow"], strict=True):
        assert row[0] == (step.get("step") or step["rule"])
        assert row[2] == str(step["remaining"])
        assert row[1] == (str(step["excluded"]) if "excluded" in step else "")
    summary = dict(_page(report).tables["cohort-summary"][1:])
    assert summary["ICU stays"] == str(audit["icu_stays"])
    assert summary["Cohort stays"] == str(audit["cohort_stays"])
    splits = _read(ws, "splits/audit.json")["splits"]
    assert {r[0]: r[1] for r in _page(report).tables["splits"][1:]} == {
        k: str(v["patients"]) for k, v in splits.items()
    }


def test_final_table_equals_summarize(study):
    from sepsisrl.ope.summary import CARD_ROWS, summarize

    ws, report = study
    evals = _read(ws, "study/final.json")["selected"]["evals"]
    rows = summarize([ws / e for e in evals])["metrics"]
    expected = []
    for key, label in CARD_ROWS:
        r = rows[key]
        extra = f"; {r['undefined']} undefined" if r["undefined"] else ""
        if r["mean"] is None:
            expected.append([label, f"undefined (n={r['n']}{extra})"])
        else:
            expected.append([label, f"{r['mean']:.4f} ± {r['std']:.4f} (n={r['n']}{extra})"])
    assert _page(report).tables["final-card"] == [["Metric", "Value"], *expected]
    md = (report / "report.md").read_text(encoding="utf-8")
    assert "\n".join(f"| {a} | {b} |" for a, b in expected) in md
    assert f"Release folder release/sepsisrl-{SELECTED} is missing." in md


def test_selection_and_its_rule_appear(study):
    ws, report = study
    sel = _read(ws, "study/selection.json")
    md = (report / "report.md").read_text(encoding="utf-8")
    for gate, value in sel["rule"]["gates"].items():
        assert f"{gate} = {json.dumps(value)}" in md
    assert sel["rule"]["score"] in md and sel["rule"]["description"] in md
    table = _page(report).tables["candidates"]
    roles = {r[0]: r[1] for r in table[1:]}
    assert roles == {SELECTED: "SELECTED", OTHER: ""}
    chosen = dict(_page(report).tables["selected"][1:])
    assert chosen["Selected"] == SELECTED and chosen["Reason"] == sel["selected"]["reason"]
    assert chosen["Fallback used"] == ("yes" if sel["selected"]["fallback"] else "no")
    digest = hashlib.sha256((ws / "study" / "selection.json").read_bytes()).hexdigest()
    assert f"records the sha256 of study/selection.json, {digest[:12]})" in md


def test_test_split_rows_show_gated_estimates_and_say_why(study):
    ws, report = study
    final = _read(ws, "study/final.json")
    evals = final["selected"]["evals"] + [b["eval"] for b in final["baselines"]]
    rows = {r[1]: r for r in _page(report).tables["test-estimates"][1:]}
    assert set(rows) == set(evals)
    for ev in evals:
        doc = _read(ws, f"{ev}/metrics.json")
        m, note = doc["metrics"], rows[ev][5]
        for col, key in ((2, "fqe"), (3, "wdr"), (4, "wis")):
            if m[f"{key}_mean"] is None:  # gated: no number, and the reason is given
                assert rows[ev][col] == "undefined", (ev, key)
            else:
                assert rows[ev][col].startswith(f"{m[f'{key}_mean']:.4g} [")
        if not doc["evaluable"]["importance_sampling"]:
            assert "not evaluable by importance sampling" in note
            for reason in doc["evaluable"]["importance_sampling_reasons"]:
                assert reason in note
        if not doc["evaluable"]["model"]:
            assert "not evaluable by FQE/WDR" in note
        ess, gate = doc["overlap"]["ess_per_decision"], doc["config"]["gates"]["is_ess_min"]
        followed = next((i for i, x in enumerate(ess) if x < gate), len(ess))
        assert rows[ev][7] == f"{followed} of {len(ess)}", (ev, ess)
    clin = next(r for r in rows.values() if r[0].startswith("clinician"))
    assert clin[4] != "undefined"  # the clinicians are on-policy: WIS is defined


def test_subgroup_and_safety_tables_come_from_the_selected_eval(study):
    ws, report = study
    doc = _read(ws, _read(ws, "study/final.json")["selected"]["evals"][0] + "/metrics.json")
    page = _page(report)
    groups = {r[0]: r for r in page.tables["subgroups"][1:]}
    assert set(groups) == set(doc["subgroups"])
    for name, g in doc["subgroups"].items():
        assert groups[name][1] == str(g["decisions"])
    safety = {r[0]: r[1:] for r in page.tables["safety"][1:]}
    assert safety["total"] == [str(doc["safety"]["policy_total"]),
                               str(doc["safety"]["clinicians_total"])]  # fmt: skip


def _shadow(ws: Path, dest: Path, skip: str) -> Path:
    """A workspace of symlinks to ``ws``'s entries except ``skip`` (a top-level name)."""
    dest.mkdir()
    for entry in ws.iterdir():
        if entry.name not in (skip, "report"):
            (dest / entry.name).symlink_to(entry)
    return dest


@pytest.mark.parametrize(
    "missing",
    ["study/selection.json", "study/final.json", "cohort/audit.json", "features/audit.json"],
)
def test_missing_artifact_names_the_file(study, tmp_path, missing):
    ws, _ = study
    top, name = missing.split("/")
    shadow = _shadow(ws, tmp_path / "ws", top)
    (shadow / top).mkdir()
    for f in (ws / top).iterdir():
        if f.name != name:
            (shadow / top / f.name).symlink_to(f)
    with pytest.raises(ReportError, match=missing.replace(".", r"\.")):
        write_report(shadow)
    assert not (shadow / "report").exists()
    assert not list(shadow.glob(".report.partial-*"))


def test_missing_evaluation_names_the_file(study, tmp_path):
    ws, _ = study
    gone = _read(ws, "study/final.json")["baselines"][0]["eval"]
    shadow = _shadow(ws, tmp_path / "ws", "eval")
    (shadow / "eval").mkdir()
    for e in (ws / "eval").iterdir():
        if f"eval/{e.name}" != gone:
            (shadow / "eval" / e.name).symlink_to(e)
    with pytest.raises(ReportError, match=f"{gone}/metrics.json"):
        write_report(shadow)


def test_schema_error_names_the_file_and_key(study, tmp_path):
    ws, _ = study
    shadow = _shadow(ws, tmp_path / "ws", "study")
    (shadow / "study").mkdir()
    (shadow / "study" / "selection.json").symlink_to(ws / "study" / "selection.json")
    final = _read(ws, "study/final.json")
    del final["baselines"]
    (shadow / "study" / "final.json").write_text(json.dumps(final))
    with pytest.raises(ReportError, match=r"study/final\.json.*missing required key 'baselines'"):
        write_report(shadow)


def test_rewriting_is_deterministic_and_atomic(study):
    ws, report = study
    before = {p.name: p.read_bytes() for p in report.rglob("*") if p.is_file()}
    (report / "stale.txt").write_text("from an older report")
    assert write_report(ws) == report
    after = {p.name: p.read_bytes() for p in report.rglob("*") if p.is_file()}
    assert after == before  # same bytes (report.md, index.html, figures); stale file gone
    assert not list(ws.glob(".report.partial-*")) and not list(ws.glob(".report.old-*"))
    assert os.listdir(report / "figures")


def test_renders_in_a_headless_browser(study, tmp_path):
    """The page as a reader sees it: a real Chromium builds its DOM (title, warning, every
    embedded PNG) and a screenshot. No browser is a failure: .ci/run installs Chromium."""
    _, report = study
    html_path = report / "index.html"
    structure = inspect_html(html_path.read_text(encoding="utf-8"))
    assert structure["self_contained"] and structure["warning"]
    assert structure["embedded_png_images"] == structure["images"] >= 10
    if find_browser() is None:
        pytest.fail(
            "no headless browser on PATH (chromium, chromium-browser or google-chrome): this test "
            "renders the report in one; install it (Debian: `apt-get install -y chromium`, as "
            ".ci/run does)"
        )
    shot = tmp_path / "shot.png"
    res = render_in_browser(html_path, shot)
    assert res["title_in_dom"] and res["warning_in_dom"]
    assert res["images_in_dom"] == res["embedded_png_in_dom"] == structure["images"]
    assert shot.read_bytes()[:8] == PNG and res["screenshot_bytes"] > 10_000


def test_without_a_browser_the_driver_says_how_to_get_one(study, monkeypatch, tmp_path):
    _, report = study
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no browser on PATH
    assert find_browser() is None
    with pytest.raises(BrowserError, match=r"no headless browser on PATH .*apt-get install"):
        render_in_browser(report / "index.html")


def test_other_output_folder(study, tmp_path):
    ws, report = study
    out = write_report(ws, tmp_path / "elsewhere" / "rep")
    assert out == tmp_path / "elsewhere" / "rep"
    assert (out / "report.md").read_bytes() == (report / "report.md").read_bytes()
    assert not list(out.parent.glob(".rep.partial-*"))


def test_the_report_says_whether_non_inferiority_in_mortality_is_shown():
    from sepsisrl.study.report import noninferiority_line

    def diff(lo, hi):
        return {"mortality_90d": {"mean": (lo + hi) / 2, "ci95": [lo, hi]}}

    # the quick study's export on its 1,000 truth patients (docs/run.md)
    wide = noninferiority_line(diff(-0.029, 0.034))
    assert "differs by +0.3 points [-2.9, +3.4]" in wide
    assert "non-inferiority within 1 point is NOT shown" in wide
    assert "cannot rule out up to 3.4 points more" in wide
    worse = noninferiority_line(diff(0.0002, 0.0126))
    assert "NOT shown (it is worse)" in worse
    shown = noninferiority_line(diff(-0.0131, -0.0005))
    assert "non-inferiority within 1 point is shown." in shown
    assert "NOT" not in noninferiority_line(diff(-0.02, 0.01))  # the margin itself passes


def test_the_clinician_verdict_is_checked_against_the_truth():
    from sepsisrl.study.report import clinician_verdict_against_truth

    worse = {"difference_from_clinicians": {"value": {"mean": -0.5, "ci95": [-1.4, 0.3]}}}
    better = {"difference_from_clinicians": {"value": {"mean": 1.0, "ci95": [0.2, 1.8]}}}
    said_better = {"estimator": "fqe", "credibly_better": True}
    said_not = {"estimator": "fqe", "credibly_better": False}
    assert "DISAGREES with the truth" in clinician_verdict_against_truth(said_better, worse)
    assert "agrees with the truth" in clinician_verdict_against_truth(said_not, worse)
    assert "agrees with the truth" in clinician_verdict_against_truth(said_better, better)
    assert "DISAGREES with the truth" in clinician_verdict_against_truth(said_not, better)
    undefined = {"estimator": "fqe", "credibly_better": None}
    assert clinician_verdict_against_truth(undefined, worse) is None
    assert clinician_verdict_against_truth(None, worse) is None
    # a verdict that does not survive the required unobserved confounding claims nothing
    fragile = {**said_better, "confounding": {"survives": False, "required": 1.1,
                                              "holds_up_to": 1.05, "fails_at": 1.1}}  # fmt: skip
    line = clinician_verdict_against_truth(fragile, worse)
    assert "not robust to unobserved confounding of Lambda = 1.1" in line
    assert "agrees with the truth" in line and "holds up to Lambda = 1.05" in line
    assert "DISAGREES with the truth" in clinician_verdict_against_truth(fragile, better)
    robust = {**said_better, "confounding": {"survives": True, "required": 1.1,
                                             "holds_up_to": 1.2, "fails_at": 1.3}}  # fmt: skip
    assert "agrees with the truth" in clinician_verdict_against_truth(robust, better)
