"""The comparison report: a Markdown and JSON table, a confusion matrix per model, ROC and PR curves."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from idcscan.core.metrics import precision_recall_curve, roc_curve


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _mean_sd(entry: dict[str, float | None], digits: int = 3) -> str:
    if entry["mean"] is None:
        return "-"
    return f"{entry['mean']:.{digits}f} ± {entry['sd']:.{digits}f}"


CV_COLUMNS = (
    ("fn", "missed IDC (fn) per fold"),
    ("recall", "sens"),
    ("specificity", "spec"),
    ("balanced_accuracy", "BAC"),
    ("f1", "F1"),
    ("auroc", "AUROC"),
    ("pr_auc", "PR-AUC"),
)


def cv_table(models: list[dict[str, Any]], best: str) -> list[str]:
    """One line per configuration: mean ± sd over the held-out folds, and the pooled counts."""
    header = ["configuration", *(t for _, t in CV_COLUMNS), "pooled tp / fp / tn / fn"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in models:
        cv, pooled = row["cv"], row["cv"]["pooled"]
        name = row["name"] + (" *" if row["name"] == best else "")
        cells = [name, *(_mean_sd(cv[k], 0 if k == "fn" else 3) for k, _ in CV_COLUMNS)]
        cells.append(f"{pooled['tp']} / {pooled['fp']} / {pooled['tn']} / **{pooled['fn']}**")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def fold_table(row: dict[str, Any]) -> list[str]:
    """Every fold of one configuration: held-out figures at that fold's validation threshold."""
    keys = ("fn", "tp", "fp", "tn", "recall", "specificity", "balanced_accuracy", "f1", "auroc")
    lines = [
        "| fold | threshold | temperature | " + " | ".join(keys) + " |",
        "|" + "---|" * (len(keys) + 3),
    ]
    for fold, figures in enumerate(row["cv"]["per_fold"]):
        temperature = row["cv"]["temperature"][fold]
        cells = [str(fold), _cell(figures["threshold"]), _cell(temperature)]
        lines.append("| " + " | ".join(cells + [_cell(figures[k]) for k in keys]) + " |")
    return lines


def comparison_markdown(report: dict[str, Any]) -> str:
    """The comparison as Markdown: the cross-validation table, each configuration's folds,
    and the published test patients scored once by the chosen model."""
    exported = (
        f"exported from its fold {report['best_fold']} (best validation AUROC)."
        if report["shipped"]
        else "nothing exported (`--no-export`)."
    )
    lines = [
        "# Model comparison",
        "",
        f"{report['folds']} patient-level fold(s); every figure is on held-out patients at the "
        f"threshold chosen on the validation fold (rule: {report['settings']['threshold_rule']}). "
        f"Selected by {report['criterion']}: **{report['best']}** (marked *), {exported}",
        "",
        *cv_table(report["models"], report["best"]),
        "",
    ]
    for row in report["models"]:
        lines += [f"## {row['name']}, per fold", "", *fold_table(row), ""]
    if report["shipped"]:
        lines += variants_section(report)
    lines.append(
        "Confusion matrices (held-out folds summed): `confusion-<configuration>.png`; ROC and "
        "precision-recall curves (held-out folds pooled): `curves-held-out.png`."
    )
    return "\n".join(lines) + "\n"


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(figures: dict[str, Any], path: Path, title: str) -> None:
    plt = pyplot()
    matrix = np.array([[figures["tn"], figures["fp"]], [figures["fn"], figures["tp"]]])
    fig, ax = plt.subplots(figsize=(4.0, 3.6))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix):
        colour = "white" if count > matrix.max() / 2 else "black"
        ax.text(j, i, str(count), ha="center", va="center", color=colour)
    # The cell that matters most: IDC the model called negative.
    ax.add_patch(plt.Rectangle((-0.5, 0.5), 1, 1, fill=False, edgecolor="crimson", linewidth=2.5))
    ax.text(0, 1.3, "missed IDC", ha="center", va="center", color="crimson", fontsize=8)
    ax.set_xticks([0, 1], ["no IDC", "IDC"])
    ax.set_yticks([0, 1], ["no IDC", "IDC"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(textwrap.fill(title, 42), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str) -> None:
    """ROC and precision-recall curves of several models on one split, side by side."""
    plt = pyplot()
    fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(9, 4))
    for name, (labels, scores) in curves.items():
        fpr, tpr, _ = roc_curve(labels, scores)
        precision, recall, _ = precision_recall_curve(labels, scores)
        roc_ax.plot(fpr, tpr, label=name)
        pr_ax.plot(recall, precision, label=name)
    roc_ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    roc_ax.set(xlabel="false positive rate", ylabel="sensitivity", title=f"ROC, {title}")
    pr_ax.set(xlabel="recall", ylabel="precision", title=f"precision-recall, {title}")
    for ax in (roc_ax, pr_ax):
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


TARGETS = {"balanced_accuracy": 0.87, "f1": 0.80, "recall": 0.90}
"""Targets, cross-validated and on the published test patients (published: Cruz-Roa et al. 2014
F1 0.718 / BAC 0.842; Janowczyk & Madabhushi 2016 F1 0.765 / BAC 0.847)."""


def variants_section(report: dict[str, Any]) -> list[str]:
    """The inference variants (TTA, fold ensemble): cross-validated figures and cost; and the
    published test patients, scored once by what ships (and, for information, the ensemble)."""
    variants = report.get("variants") or {}
    lines = [
        "## Inference variants of the selected configuration",
        "",
        "| variant | members | views | mean held-out AUROC | BAC | sens | spec | F1 | tiles/s "
        "(onnxruntime, this machine) | slowdown |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in variants.items():
        if "tiles_per_s" not in entry:
            continue
        cv = entry.get("cv")
        figures = (
            [_mean_sd(cv[k]) for k in ("auroc", "balanced_accuracy", "recall", "specificity", "f1")]
            if cv
            else ["not cross-validatable"] + ["-"] * 4
        )
        mark = " (shipped)" if name == report["shipped"] else ""
        lines.append(
            f"| {name}{mark} | {entry['members']} | {entry['views']} | "
            + " | ".join(figures)
            + f" | {entry['tiles_per_s']:.0f} | {entry['slowdown']:.2f}x |"
        )
    lines.append("")
    for name, final in (report.get("final_test") or {}).items():
        lines += [
            f"### Published test patients, scored once by {name}"
            + (" (shipped)" if name == report["shipped"] else " (for information)"),
            "",
            *_figure_rows(
                {
                    "all": final["overall"],
                    **{f"patient {p}": r for p, r in final["per_patient"].items()},
                }
            ),
            "",
        ]
    return lines


def reproduce_command(settings: dict[str, Any]) -> str:
    """The `idcscan compare` command line that repeats a comparison with these settings."""
    parts = ["idcscan", "compare", "--data", "<IDC dataset>", "--out", settings["out"]]
    parts += ["--archs", *settings["archs"], "--balance", *settings["balance"]]
    parts += ["--augment", *settings.get("augment", ["current"])]
    for name in (
        "split",
        "folds",
        "seed",
        "width",
        "epochs",
        "max_per_patient",
        "batch_size",
        "lr",
        "weight_decay",
        "patience",
        "threshold_rule",
        "validation_weights",
    ):
        if name in settings:
            parts += [f"--{name.replace('_', '-')}", str(settings[name])]
    if settings["threshold_rule"] == "sensitivity":
        parts += ["--min-sensitivity", str(settings["min_sensitivity"])]
    if settings.get("int8"):
        parts.append("--int8")
    return " ".join(parts)


def _figure_rows(reports: dict[str, dict[str, Any]]) -> list[str]:
    keys = (
        "n",
        "fn",
        "tp",
        "fp",
        "tn",
        "recall",
        "specificity",
        "balanced_accuracy",
        "f1",
        "precision",
        "accuracy",
        "auroc",
        "pr_auc",
    )
    lines = ["| | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
    for name, figures in reports.items():
        lines.append(f"| {name} | " + " | ".join(_cell(figures[k]) for k in keys) + " |")
    return lines


def _targets_line(figures: dict[str, Any], where: str) -> str:
    def value(key: str) -> float | None:
        entry = figures[key]
        return entry["mean"] if isinstance(entry, dict) else entry

    parts = []
    for key, target in TARGETS.items():
        got = value(key)
        verdict = "-" if got is None else ("met" if got >= target else "NOT met")
        parts.append(f"{key} >= {target}: {verdict} ({_cell(got)})")
    return f"- {where}: " + "; ".join(parts)


def model_card(report: dict[str, Any], metrics: dict[str, Any]) -> str:
    """A Markdown model card for the model a comparison ships."""
    best = next(r for r in report["models"] if r["name"] == report["best"])
    shipped = report["variants"][report["shipped"]]
    fold = report["best_fold"]
    rule = metrics["threshold_rule"]
    if rule == "sensitivity":
        rule += f" (highest threshold with validation sensitivity >= {metrics['min_sensitivity']})"
    else:
        rule += " (the threshold maximising balanced accuracy on the validation patients)"
    if metrics.get("validation_weights") == "patient":
        rule += "; every validation patient weighs the same"
    data = metrics["data"]
    lines = [
        f"# Model card: {shipped['version']}",
        "",
        "A research model, not a medical device: it finds invasive ductal carcinoma (IDC) in 50x50 "
        "px tiles of H&E breast tissue at about 4 um/px, and says how much IDC it misses first.",
        "",
        "## What it is",
        "",
        f"- {metrics['arch']} at width {metrics['width']} (see `idcscan/trainer/models.py`), "
        f"trained from scratch; class balance `{metrics['balance']}`, augmentation "
        f"`{metrics.get('augment')}` (see `idcscan/trainer/augment.py`), at most "
        f"{metrics.get('max_per_patient') or 'all'} patches per patient per epoch.",
        f"- Shipped variant: `{report['shipped']}` ({shipped['members']} network, "
        f"{shipped['views']} test-time view(s)), the model of fold {fold} (best validation AUROC "
        "of the selected configuration's folds).",
        "- Probability calibrated on its validation fold (temperature and bias, "
        "`idcscan/trainer/calibration.py`); decision "
        f"threshold {shipped['threshold']:.4f}, rule: {rule}.",
        f"- ONNX: {shipped['bytes'] / 1e6:.2f} MB, input `tiles` float32 (N, 3, 50, 50), output "
        "`idc_probability` (N,); tile contract and identity in the metadata. Checked against torch "
        f"on {shipped['parity_patches']} validation patches: max |difference| "
        f"{shipped['parity_max_abs_difference']:.1e}.",
        "",
        "## Data",
        "",
        f"Breast Histopathology Images patches (Janowczyk & Madabhushi 2016), "
        f"{len({p for s in report['splits'] for p in (*s['train'], *s['val'], *s['test'])})} "
        f"patients in {report['folds']} patient-level folds stratified by IDC share and size "
        "(`idcscan/trainer/splits.py`); the published test patients present locally ("
        f"{', '.join(report['final_test_patients']) or 'none'}) are in no fold and were scored "
        "once, at the end, after every choice was made.",
        "",
        f"This fold: train {data['train']['patients']} patients ({data['train']['patches']} "
        f"patches), validation {data['val']['patients']} ({data['val']['patches']}), held out "
        f"{data['test']['patients']} ({data['test']['patches']}).",
        "",
        "## Cross-validated figures (held-out patients, each fold at its validation threshold)",
        "",
        *cv_table(report["models"], report["best"]),
        "",
        f"### {best['name']}, per fold",
        "",
        *fold_table(best),
        "",
        *variants_section(report),
        "## Calibration (expected calibration error, 15 bins)",
        "",
        "The shipped variant's calibration, fitted in every fold on its validation patients "
        "and measured there and on the held-out patients:",
        "",
        "| fold | temperature | bias | validation before | validation after | held-out before "
        "| held-out after |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, c in enumerate((shipped.get("cv") or {}).get("calibration", [])):
        lines.append(
            f"| {i} | {_cell(c['temperature'])} | {_cell(c['bias'])} | {_cell(c['val_before'])} | "
            f"{_cell(c['val_after'])} | {_cell(c['held_out_before'])} | "
            f"{_cell(c['held_out_after'])} |"
        )
    final = (report.get("final_test") or {}).get(report["shipped"])
    lines += [
        "",
        "## Targets",
        "",
        _targets_line(best["cv"], f"{best['name']}, mean over folds (single model)"),
    ]
    if final:
        lines.append(_targets_line(final["overall"], "shipped model, published test patients"))
    lines += [
        "",
        "Published on the full 49-patient test split: Cruz-Roa et al. 2014 F1 0.718 / BAC 0.842;"
        " Janowczyk & Madabhushi 2016 F1 0.765 / BAC 0.847. The local test patients are four: "
        "indicative only.",
        "",
        "## Reproduce",
        "",
        "```",
        reproduce_command(report["settings"]),
        f"idcscan slide-rule {report['settings']['out']} --data <IDC dataset>",
        f"cp {report['settings']['out']}/best.onnx idcscan/models/idc-reference.onnx",
        "```",
        "",
    ]
    return "\n".join(lines)
