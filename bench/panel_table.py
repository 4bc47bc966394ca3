"""Markdown tables of OPE panel results (``ope_panel.py --out`` / ``held_logging.py --out``).

Usage:  python bench/panel_table.py LABEL=FILE[#VARIANT] [...] [--estimators fqe,wdr]
                                    [--policies a,b,...]

Prints, for every file, the agreement of each estimator with the truth over the evaluable
policies (Spearman, MAE, the MAE of the difference from the clinicians, 95 % CI coverage, top-1
regret, the policy ranked first, the truth's own noise and the rank agreement of an on-policy
oracle with as many episodes as the evaluated split), then one table of every policy's truth and estimates per file
(``not evaluable`` where the gates refused it). ``--policies`` compares over those policies only
(recomputed from the rows). ``FILE#VARIANT`` reads one FQE variant of a ``held_logging.py --fqe``
file (default: its first). The docs quote these tables; nothing in them is typed by hand.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("files", nargs="+", help="LABEL=FILE")
    ap.add_argument("--estimators", default="fqe,wdr")
    ap.add_argument("--policies", default=None, help="compare over these policies only")
    args = ap.parse_args()
    docs = []
    for item in args.files:
        label, _, path = item.partition("=")
        path, _, variant = path.partition("#")
        if not path or not Path(path).is_file():
            raise SystemExit(f"{item}: expected LABEL=FILE with FILE an existing "
                             "ope_panel.py --out file")  # fmt: skip
        doc = json.loads(Path(path).read_text())
        if variant:
            if variant not in doc.get("variants", {}):
                raise SystemExit(f"{item}: no FQE variant {variant!r} in {path} (it has: "
                                 f"{', '.join(doc.get('variants', {})) or 'none'})")  # fmt: skip
            doc = {**doc, **doc["variants"][variant]}
        if args.policies:
            doc = _only(doc, args.policies.split(","), item)
        docs.append((label, doc))
    wanted = args.estimators.split(",")

    def num(x) -> str:
        return "-" if x is None else f"{x:.2f}"

    print("| run | world seed | estimator | evaluable | Spearman | MAE | MAE of the difference "
          "from the clinicians | 95 % CI coverage | top-1 regret | ranked first | truth's own "
          "Spearman (ceiling) | Spearman vs resampled truth (5th-95th pct.) | on-policy oracle "
          "with the evaluated split's episodes: Spearman (5th-95th pct.) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label, doc in docs:
        for est in wanted:
            r = _recompared(doc, est)
            total = r["policies"] + len(r["not_evaluable"])
            noise = r.get("truth_noise")  # files written without per-episode returns have none
            ceiling = "-" if not noise else f"{noise['ceiling']:.2f} ({noise['ceiling_p05']:.2f})"
            spread = ("-" if not noise or "spearman_p05" not in noise
                      else f"{noise['spearman_p05']:.2f} to {noise['spearman_p95']:.2f}")  # fmt: skip
            oracle = (noise or {}).get("oracle")  # files written before it was measured: none
            orc = ("-" if not oracle else f"{oracle['median']:.2f} at {oracle['episodes']} "
                   f"({oracle['p05']:.2f} to {oracle['p95']:.2f}; >= 0.8 in "
                   f"{oracle['reaches_target']:.0%})")  # fmt: skip
            print(f"| {label} | {doc['world_seed']} | {est.upper()} | {r['policies']} of {total} | "
                  f"{num(r['spearman'])} | {num(r['mae'])} | "
                  f"{num(_vs_clinician(doc['rows'], est))} | {num(r['coverage'])} | "
                  f"{num(r['top1_regret'])} | {r['ranked_first']} | {ceiling} | {spread} | {orc} |")  # fmt: skip
    _intensity_table(docs, wanted)
    print()
    names = [r["policy"] for r in docs[0][1]["rows"]]
    heads = [f"{lab}: truth" + "".join(f" | {lab}: {e.upper()}" for e in wanted) for lab, _ in docs]
    print("| policy | " + " | ".join(heads) + " |")
    print("|---|" + ("---|" * (1 + len(wanted))) * len(docs))
    for name in names:
        cells = []
        for _, doc in docs:
            row = next((r for r in doc["rows"] if r["policy"] == name), None)
            if row is None:
                cells += ["-"] * (1 + len(wanted))
                continue
            cells.append(f"{row['truth']:.2f}")
            for e in wanted:
                v = row["estimates"].get(e, (None,))[0]
                cells.append("not evaluable" if v is None else f"{v:.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


def _intensity_table(docs: list[tuple[str, dict]], wanted: list[str]) -> None:
    """Whether each estimator's errors follow the policies' treatment intensity
    (``compare``'s ``error_by_intensity``), for the files whose rows carry it."""
    lines = []
    for label, doc in docs:
        for est in wanted:
            by = _recompared(doc, est).get("error_by_intensity")
            if not by:
                continue
            cells = [f"{_signed(v['error'])} ({_signed(v['truth'])})" for v in by.values()]
            lines.append(f"| {label} | {doc['world_seed']} | {est.upper()} | " + " | ".join(cells)
                         + " |")  # fmt: skip
    if lines:
        print("\n| run | world seed | estimator | error vs vasopressor bin (truth's own) | error "
              "vs IV-fluid bin (truth's own) |")  # fmt: skip
        print("|---|---|---|---|---|")
        print("\n".join(lines))


def _only(doc: dict, names: list[str], item: str) -> dict:
    """``doc`` restricted to the policies ``names`` (its comparisons recomputed from the rows)."""
    have = {r["policy"] for r in doc["rows"]}
    missing = [n for n in names if n not in have]
    if missing:
        raise SystemExit(f"{item}: no row for --policies {', '.join(missing)}")
    rows = [r for r in doc["rows"] if r["policy"] in names]
    returns = doc.get("returns")
    if returns:
        returns = {k: v for k, v in returns.items() if k in names}
    from sepsisrl.truth.compare import compare

    estimators = list(doc["estimators"])
    return {**doc, "rows": rows, "returns": returns,
            "estimators": compare(rows, returns, estimators=estimators)}  # fmt: skip


def _signed(x: float | None) -> str:
    return "-" if x is None else f"{x:+.2f}"


def _recompared(doc: dict, est: str) -> dict:
    """The file's comparison for ``est``, recomputed by today's ``compare`` from its rows and
    per-episode true returns (seeded, so the same figures as when it was written, and files
    written before a figure existed gain it), or as written where the returns are absent."""
    from sepsisrl.truth.compare import compare

    if not doc.get("returns"):
        return doc["estimators"][est]
    return compare(doc["rows"], doc["returns"], estimators=[est])[est]


def _vs_clinician(rows: list[dict], est: str) -> float | None:
    """The MAE of the estimated difference from the clinicians (``compare``'s
    ``mae_vs_clinician``), recomputed so that files written before it existed have it."""
    from sepsisrl.truth.compare import compare

    return compare(rows, estimators=[est])[est].get("mae_vs_clinician")


if __name__ == "__main__":
    main()
