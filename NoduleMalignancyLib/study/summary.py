"""The analysis of a reading study: exports, a per-reader summary and the MRMC (docs/DESIGN.md §14).

Why one command: the owner ends a study with one folder that holds the data (``ratings.csv``,
``scores.csv``, ``scores.imrmc``), the per-reader figures (``summary.json``, ``summary.md``), the
Obuchowski-Rockette analysis of aided vs unaided (``mrmc.json``, ``mrmc.md``) and the per-reader
ROC plot (``reader_rocs.png``), all computed from one read of the database.

Per reader: the AUROC unaided and aided on the cases with truth the reader rated in both
modalities; how the malignancy rating changed after the model was seen, and whether it moved
toward the model's 1-5 malignancy score; agreement with the model and with the LIDC readers'
mean malignancy (quadratic-weighted kappa, Spearman, share within +-1), unaided vs aided, on the
cases where the study file gives them; reading time (median and IQR) per modality.

The MRMC needs a fully crossed design, so it takes only the readers who rated every case with
truth in both modalities; the others are named, with the reason, in both reports. A skipped case
(its CT would not load, ``StudyStore.skip``) has no rating, so a reader who skipped a case with
truth is incomplete and left out the same way; the summary lists every skip with its reason.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import stats

from ..core.atomic import atomic_path, write_json
from . import mrmc
from .design import MODALITIES, Study
from .markdown import markdown_text as md
from .store import SCORES, Snapshot, StudyStore

__all__ = [
    "MRMC_ORDER",
    "agreement",
    "analyze_study",
    "auroc",
    "reader_summary",
    "summarise",
    "summary_markdown",
    "weighted_kappa",
]

MRMC_ORDER = ("aided", "unaided")  # the MRMC's differences are aided minus unaided
MALIGNANCY_LEVELS = (1, 5)  # the LIDC malignancy scale
OPTIONAL_OUTPUTS = ("scores.imrmc", "reader_rocs.png")  # written only when the MRMC can run


# --------------------------------------------------------------------------- statistics


def auroc(truth: Sequence[int], score: Sequence[float]) -> float | None:
    """Mann-Whitney AUROC (ties 1/2), as the MRMC's; None without both classes."""
    truth, score = np.asarray(truth), np.asarray(score, dtype=float)
    n1, n0 = int((truth == 1).sum()), int((truth == 0).sum())
    if n1 == 0 or n0 == 0:
        return None
    ranks = stats.rankdata(score)
    return float((ranks[truth == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def weighted_kappa(a: Sequence[int], b: Sequence[int], levels=MALIGNANCY_LEVELS) -> float | None:
    """Cohen's kappa with quadratic weights on an ordinal scale; None where it is undefined.

    Why quadratic: a 2-versus-4 disagreement on the malignancy scale is worse than 3-versus-4.
    """
    low, high = levels
    a, b = np.asarray(a, dtype=int) - low, np.asarray(b, dtype=int) - low
    k = high - low + 1
    if len(a) == 0:
        return None
    observed = np.zeros((k, k))
    np.add.at(observed, (a, b), 1.0)
    observed /= len(a)
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0))
    i, j = np.indices((k, k))
    weights = (i - j) ** 2 / (k - 1) ** 2
    chance = float((weights * expected).sum())
    return None if chance == 0 else 1.0 - float((weights * observed).sum()) / chance


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(stats.spearmanr(a, b).statistic)


def _nearest_level(values: np.ndarray, levels=MALIGNANCY_LEVELS) -> np.ndarray:
    """A continuous 1-5 score on the integer scale (halves round up, not to even)."""
    return np.clip(np.floor(values + 0.5), *levels).astype(int)


def agreement(ratings: Sequence[int], target: Sequence[float]) -> dict:
    """The reader's 1-5 ratings against a continuous 1-5 target (model score, LIDC mean)."""
    r, t = np.asarray(ratings, dtype=float), np.asarray(target, dtype=float)
    if len(r) == 0:
        return {
            "n": 0,
            "kappa_quadratic": None,
            "spearman": None,
            "within_1": None,
            "mean_abs_difference": None,
        }
    return {
        "n": len(r),
        "kappa_quadratic": weighted_kappa(r.astype(int), _nearest_level(t)),
        "spearman": _spearman(r, t),
        "within_1": float(np.mean(np.abs(r - t) <= 1.0)),
        "mean_abs_difference": float(np.mean(np.abs(r - t))),
    }


def _times(seconds: Sequence[float]) -> dict:
    if not seconds:
        return {"n": 0, "median": None, "q25": None, "q75": None}
    q25, median, q75 = np.percentile(np.asarray(seconds, dtype=float), [25, 50, 75])
    return {"n": len(seconds), "median": float(median), "q25": float(q25), "q75": float(q75)}


def _mean(values) -> float | None:
    values = list(values)
    return float(np.mean(values)) if values else None


# --------------------------------------------------------------------------- per reader


def _by_modality(ratings: list[dict]) -> dict[str, dict[str, dict[str, dict]]]:
    """reader -> modality -> case -> rating row."""
    out: dict[str, dict[str, dict[str, dict]]] = {}
    for row in ratings:
        reader = out.setdefault(row["reader"], {m: {} for m in MODALITIES})
        reader[row["modality"]][row["case"]] = row
    return out


def _model_scores(study: Study) -> dict[str, float]:
    return {
        c.id: c.model.malignancy_score
        for c in study.cases
        if c.model is not None and c.model.malignancy_score is not None
    }


def _reference_means(study: Study) -> dict[str, float]:
    return {
        c.id: c.reference.malignancy_mean
        for c in study.cases
        if c.reference is not None and c.reference.malignancy_mean is not None
    }


def _accuracy(paired: list[str], truth: dict, unaided: dict, aided: dict, score: str) -> dict:
    cases = [c for c in paired if truth[c] is not None]
    labels = [truth[c] for c in cases]
    u = auroc(labels, [unaided[c][score] for c in cases])
    a = auroc(labels, [aided[c][score] for c in cases])
    return {
        "n_cases": len(cases),
        "n_malignant": sum(labels),
        "n_benign": len(labels) - sum(labels),
        "unaided": u,
        "aided": a,
        "difference": None if u is None or a is None else a - u,
    }


def _change(paired: list[str], unaided: dict, aided: dict, model: dict) -> tuple[dict, dict]:
    """How the malignancy rating moved from unaided to aided, and whether toward the model."""
    before = np.array([unaided[c]["malignancy"] for c in paired], dtype=float)
    after = np.array([aided[c]["malignancy"] for c in paired], dtype=float)
    shift = after - before
    change = {
        "n": len(paired),
        "mean_abs_malignancy": _mean(np.abs(shift)),
        "mean_malignancy": _mean(shift),
        "share_changed": _mean(shift != 0),
        "mean_abs_confidence": _mean(
            abs(aided[c]["confidence"] - unaided[c]["confidence"]) for c in paired
        ),
    }
    changed = [c for c, s in zip(paired, shift, strict=True) if s != 0 and c in model]
    closer = [
        abs(unaided[c]["malignancy"] - model[c]) - abs(aided[c]["malignancy"] - model[c])
        for c in changed
    ]
    toward_model = {
        "n_changed": len(changed),
        "share_toward": _mean(d > 0 for d in closer),
        "share_away": _mean(d < 0 for d in closer),
    }
    return change, toward_model


def _agreement_pair(paired: list[str], unaided: dict, aided: dict, target: dict) -> dict | None:
    """Agreement unaided and aided on the same cases (those the target covers); None if none."""
    cases = [c for c in paired if c in target]
    if not cases:
        return None
    goal = [target[c] for c in cases]
    return {
        "unaided": agreement([unaided[c]["malignancy"] for c in cases], goal),
        "aided": agreement([aided[c]["malignancy"] for c in cases], goal),
    }


def _exclusion(
    n_truth: int, unaided: dict, aided: dict, truth: dict, skipped: Sequence[dict] = ()
) -> str | None:
    """Why a reader cannot enter the MRMC (it needs every case with truth in both), or None."""
    known = [c for c, t in truth.items() if t is not None]
    missing = {
        m: sum(c not in rated for c in known)
        for m, rated in (("unaided", unaided), ("aided", aided))
    }
    if not unaided and not aided:
        return "rated no case"
    if not any(missing.values()):
        return None
    skips = [k for k in skipped if truth.get(k["case"]) is not None]
    because = f"; {len(skips)} of them skipped (CT not readable)" if skips else ""
    return (
        f"incomplete: {missing['unaided']} unaided and {missing['aided']} aided ratings of the "
        f"{n_truth} cases with truth are missing{because} (the MRMC needs every reader x case x "
        "modality)"
    )


def _step_done(
    case: str, modality: str, rated: dict, skipped: Sequence[dict], study: Study
) -> bool:
    """Rated, or skipped (a sequential skip at the unaided step skips the aided one too)."""
    if case in rated[modality]:
        return True
    steps = {k["modality"] for k in skipped if k["case"] == case}
    return modality in steps or (study.design == "sequential" and "unaided" in steps)


def reader_summary(
    name: str,
    index: int,
    rated: dict[str, dict[str, dict]],
    study: Study,
    score: str,
    skipped: Sequence[dict] = (),
) -> dict:
    """Every per-reader figure of the summary (docs/DESIGN.md §14); ``skipped``: their skips."""
    unaided, aided = rated["unaided"], rated["aided"]
    truth = {c.id: c.truth for c in study.cases}
    order = [c.id for c in study.cases]
    paired = [c for c in order if c in unaided and c in aided]
    n_truth = sum(t is not None for t in truth.values())
    model, reference = _model_scores(study), _reference_means(study)
    change, toward_model = _change(paired, unaided, aided, model)
    exclusion = _exclusion(n_truth, unaided, aided, truth, skipped)
    return {
        "reader": name,
        "reader_index": index,
        "cases": {
            "study": len(order),
            "with_truth": n_truth,
            "unaided": len(unaided),
            "aided": len(aided),
            "paired": len(paired),
            "skipped": len({k["case"] for k in skipped}),
        },
        "finished": all(_step_done(c, m, rated, skipped, study) for c in order for m in MODALITIES),
        "in_mrmc": exclusion is None,
        "excluded_because": exclusion,
        "auroc": _accuracy(paired, truth, unaided, aided, score),
        "change": change,
        "toward_model": toward_model if model else None,
        "agreement_model": _agreement_pair(paired, unaided, aided, model),
        "agreement_reference": _agreement_pair(paired, unaided, aided, reference),
        "reading_time_s": {
            m: _times([r["reading_time_s"] for r in rated[m].values()]) for m in MODALITIES
        },
        "unaided_with_model_visible": sum(bool(r["model_visible"]) for r in unaided.values()),
    }


def summarise(snapshot: Snapshot, score: str = "malignancy") -> dict:
    """The study's description and every reader's figures (readers without ratings included)."""
    if score not in SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
    study = snapshot.study
    by_reader = _by_modality(snapshot.ratings)
    readers = [
        reader_summary(
            r["name"],
            r["reader_index"],
            by_reader.get(r["name"], {m: {} for m in MODALITIES}),
            study,
            score,
            [k for k in snapshot.skips if k["reader"] == r["name"]],
        )
        for r in snapshot.readers
    ]
    truth = [c.truth for c in study.cases if c.truth is not None]
    return {
        "study": {
            "name": study.name,
            "design": study.design,
            "seed": study.seed,
            "hide_model_until_commit": study.hide_model_until_commit,
            "cases": len(study.cases),
            "with_truth": len(truth),
            "malignant": sum(truth),
            "benign": len(truth) - sum(truth),
            "with_model_output": len(_model_scores(study)),
            "with_reference": len(_reference_means(study)),
            "readers": len(readers),
            "score": score,
        },
        "readers": readers,
        "skipped": [dict(k) for k in snapshot.skips],
        "notes": _notes(study, readers),
    }


def _notes(study: Study, readers: list[dict]) -> list[str]:
    notes = []
    if not _model_scores(study):
        notes.append(
            "agreement with the model and changes toward it are not available: the study file "
            "gives no model output (cases[].model.malignancy_score)"
        )
    if not _reference_means(study):
        notes.append(
            "agreement with the LIDC readers is not available: the study file gives no "
            "reference (cases[].reference.malignancy_mean)"
        )
    for r in readers:
        if r["excluded_because"]:
            notes.append(f"reader {r['reader']} is left out of the MRMC: {r['excluded_because']}")
        if r["unaided_with_model_visible"]:
            notes.append(
                f"reader {r['reader']}: {r['unaided_with_model_visible']} unaided ratings were "
                "made with the model visible (hide_model_until_commit is false)"
            )
    return notes


# --------------------------------------------------------------------------- MRMC


def _headline(result: mrmc.MrmcResult) -> dict:
    """Analysis 1 (random readers, random cases) in a few named figures."""
    a = result.random_readers_random_cases
    d = a.differences[0]
    return {
        "comparison": d.comparison,
        "F": a.test.statistic,
        "ndf": a.test.ndf,
        "ddf": a.test.ddf,
        "p": a.test.p_value,
        "difference": d.difference,
        "std_err": d.std_err,
        "ci": [d.ci_lower, d.ci_upper],
        "alpha": result.alpha,
        "modality_auc": {
            s.modality: {
                "auc": s.auc,
                "std_err": s.std_err,
                "df": s.df,
                "ci": [s.ci_lower, s.ci_upper],
            }
            for s in a.single_modality
        },
        "main_line": result.main_line(),
    }


def _mrmc_rows(snapshot: Snapshot, readers: Sequence[str], score: str) -> list[dict]:
    keep = set(readers)
    return [
        {
            "reader": r["reader"],
            "case": r["case"],
            "modality": r["modality"],
            "score": r[score],
            "truth": r["truth"],
        }
        for r in snapshot.ratings
        if r["reader"] in keep and r["truth"] is not None
    ]


def run_mrmc(
    snapshot: Snapshot, readers: list[dict], out: Path, score: str, covariance: str
) -> dict:
    """The OR-Hillis analysis of the complete readers; writes mrmc.*, scores.imrmc, the plot.

    Why it never raises on the design: a study with too few complete readers still gets its
    summary, with the reason the MRMC could not run.
    """
    included = [r["reader"] for r in readers if r["in_mrmc"]]
    excluded = [
        {"reader": r["reader"], "reason": r["excluded_because"]}
        for r in readers
        if not r["in_mrmc"]
    ]
    part = {"score": score, "covariance": covariance, "readers": included, "excluded": excluded}
    rows = _mrmc_rows(snapshot, included, score)
    try:
        result = mrmc.analyze(rows, covariance=covariance, modalities=MRMC_ORDER)
    except ValueError as exc:
        for name in OPTIONAL_OUTPUTS:  # never leave an earlier run's files beside this one
            (out / name).unlink(missing_ok=True)
        part |= {"available": False, "reason": str(exc)}
        write_json(out / "mrmc.json", part)
        _write_text(out / "mrmc.md", _mrmc_markdown(part, None))
        return part
    mrmc.write_imrmc(out / "scores.imrmc", rows)
    mrmc.plot_reader_rocs(rows, out / "reader_rocs.png")
    part |= {"available": True, "headline": _headline(result)}
    write_json(out / "mrmc.json", {**part, "result": result.to_dict()})
    _write_text(out / "mrmc.md", _mrmc_markdown(part, result))
    return part


def _mrmc_markdown(part: dict, result: mrmc.MrmcResult | None) -> str:
    lines = [] if result is None else [mrmc.result_markdown(result), ""]
    if result is None:
        lines += ["# MRMC ROC analysis", "", f"Not available: {md(part['reason'])}", ""]
    lines += [
        "## Readers",
        "",
        f"Score: {part['score']}. Analyzed: {', '.join(map(md, part['readers'])) or 'none'}.",
        "",
    ]
    lines += [f"- left out: {md(e['reader'])}: {md(e['reason'])}" for e in part["excluded"]]
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------- reports


def _f(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.0f} %"


def _signed(value) -> str:
    return "n/a" if value is None else f"{value:+.3f}"


def _time(t: dict) -> str:
    if not t["n"]:
        return "n/a"
    return f"{t['median']:.1f} ({t['q25']:.1f}-{t['q75']:.1f})"


def _reader_table(readers: list[dict]) -> list[str]:
    lines = [
        "| reader | cases (unaided/aided) | AUROC unaided | AUROC aided | difference | "
        "mean abs change | changed | toward model | in MRMC |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in readers:
        a, c, t = r["auroc"], r["change"], r["toward_model"]
        toward = (
            "n/a"
            if t is None or not t["n_changed"]
            else (f"{_pct(t['share_toward'])} of {t['n_changed']}")
        )
        lines.append(
            f"| {md(r['reader'])} | {r['cases']['unaided']}/{r['cases']['aided']} "
            f"| {_f(a['unaided'])} | {_f(a['aided'])} | {_signed(a['difference'])} "
            f"| {_f(c['mean_abs_malignancy'], 2)} | {_pct(c['share_changed'])} | {toward} "
            f"| {'yes' if r['in_mrmc'] else 'no'} |"
        )
    return lines


def _agreement_table(readers: list[dict], key: str, missing: str) -> list[str]:
    if all(r[key] is None for r in readers):
        return [f"Not available: {missing}."]
    lines = [
        "| reader | cases | kappa unaided | kappa aided | Spearman unaided | Spearman aided "
        "| within 1 unaided | within 1 aided |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in readers:
        g = r[key]
        if g is None:
            lines.append(f"| {md(r['reader'])} | 0 | n/a | n/a | n/a | n/a | n/a | n/a |")
            continue
        u, a = g["unaided"], g["aided"]
        lines.append(
            f"| {md(r['reader'])} | {u['n']} | {_f(u['kappa_quadratic'])} "
            f"| {_f(a['kappa_quadratic'])} "
            f"| {_f(u['spearman'])} | {_f(a['spearman'])} | {_pct(u['within_1'])} "
            f"| {_pct(a['within_1'])} |"
        )
    return lines


def _mrmc_lines(part: dict) -> list[str]:
    if not part.get("available"):
        return [f"Not available: {md(part['reason'])}"]
    h = part["headline"]
    level = round(100 * (1 - h["alpha"]))
    lines = [
        f"{len(part['readers'])} readers ({', '.join(map(md, part['readers']))}), "
        "random readers and "
        f"random cases, {part['covariance']} covariance: F({h['ndf']}, {_f(h['ddf'], 2)}) = "
        f"{_f(h['F'], 2)}, p = {_f(h['p'], 4)}; {h['comparison']} = {_signed(h['difference'])} "
        f"({level} % CI {_f(h['ci'][0])} to {_f(h['ci'][1])}).",
        "",
        f"| modality | AUROC | {level} % CI |",
        "|---|---|---|",
    ]
    lines += [
        f"| {m} | {_f(s['auc'])} | {_f(s['ci'][0])} to {_f(s['ci'][1])} |"
        for m, s in h["modality_auc"].items()
    ]
    return lines


def _skipped_lines(skipped: list[dict]) -> list[str]:
    if not skipped:
        return ["None."]
    lines = [
        "A skipped step has no rating (in the sequential design a skip at the unaided step "
        "skips the aided one too). A reader who skipped a case with truth is incomplete and, as "
        "every incomplete reader, left out of the MRMC; their other figures use the cases they "
        "rated.",
        "",
        "| reader | case | session | step | reason | skipped at |",
        "|---|---|---|---|---|---|",
    ]
    for k in skipped:
        lines.append(
            f"| {md(k['reader'])} | {md(k['case'])} | {k['session']} | {k['modality']} "
            f"| {md(k['reason'])} "
            f"| {k['skipped_at']} |"
        )
    return lines


def summary_markdown(summary: dict) -> str:
    """summary.md: the study, the per-reader tables, the MRMC headline and the notes."""
    s, readers = summary["study"], summary["readers"]
    title = f"# Reading study summary{': ' + md(s['name']) if s['name'] else ''}"
    lines = [
        title,
        "",
        f"{s['design'].capitalize()} design, {s['cases']} cases ({s['with_truth']} with truth: "
        f"{s['malignant']} malignant, {s['benign']} benign), {s['readers']} readers. AUROC and "
        f"MRMC score: {s['score']}. Model output for {s['with_model_output']} cases, LIDC "
        f"reference for {s['with_reference']}.",
        "",
        "## Per reader",
        "",
        "AUROC on the cases with truth rated in both modalities; change = aided minus unaided "
        "malignancy rating (1-5); toward model = changed ratings that moved closer to the "
        "model's malignancy score.",
        "",
        *_reader_table(readers),
        "",
        "## Agreement with the model (malignancy 1-5)",
        "",
        *_agreement_table(readers, "agreement_model", "the study file gives no model output"),
        "",
        "## Agreement with the LIDC readers' mean malignancy",
        "",
        *_agreement_table(readers, "agreement_reference", "the study file gives no reference"),
        "",
        "## Reading time (s): median (IQR)",
        "",
        "| reader | unaided | aided |",
        "|---|---|---|",
        *(
            f"| {md(r['reader'])} | {_time(r['reading_time_s']['unaided'])} "
            f"| {_time(r['reading_time_s']['aided'])} |"
            for r in readers
        ),
        "",
        "## Skipped cases",
        "",
        *_skipped_lines(summary.get("skipped", [])),
        "",
        "## MRMC: aided vs unaided (Obuchowski-Rockette, Hillis ddf)",
        "",
        *_mrmc_lines(summary["mrmc"]),
    ]
    if summary["notes"]:
        lines += ["", "## Notes", "", *(f"- {md(n)}" for n in summary["notes"])]
    return "\n".join(lines) + "\n"


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def analyze_study(
    db: str | Path,
    owner_token: str,
    out_dir: str | Path,
    score: str = "malignancy",
    covariance: str = "jackknife",
) -> dict:
    """Export, summarise and run the MRMC of a study database into ``out_dir``; the summary.

    A wrong owner token raises ``PermissionError`` before anything is written. The database is
    only read (``mode=ro``): an archived study in a folder nobody may write is analyzed too.
    """
    if score not in SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
    if covariance not in mrmc.COVARIANCES:
        raise ValueError(f"covariance must be one of {mrmc.COVARIANCES}, got {covariance!r}")
    store = StudyStore(db, read_only=True)
    snapshot = store.snapshot(owner_token)
    out = Path(out_dir)
    store.export(owner_token, out, score=score, snapshot=snapshot)
    summary = summarise(snapshot, score)
    summary["mrmc"] = run_mrmc(snapshot, summary["readers"], out, score, covariance)
    write_json(out / "summary.json", summary)
    _write_text(out / "summary.md", summary_markdown(summary))
    return summary
