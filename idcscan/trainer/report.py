"""The comparison report: a Markdown and JSON table, a confusion matrix per model, ROC and PR curves."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from idcscan.core.metrics import precision_recall_curve, roc_curve

COLUMNS = (
    ("fn", "missed IDC (fn)"),
    ("balanced_accuracy", "BAC"),
    ("f1", "F1"),
    ("auroc", "AUROC"),
    ("pr_auc", "PR-AUC"),
    ("accuracy", "acc"),
    ("precision", "prec"),
    ("recall", "sens"),
    ("specificity", "spec"),
    ("tp", "tp"),
    ("fp", "fp"),
    ("tn", "tn"),
)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def markdown_table(rows: list[dict[str, Any]], best: str, criterion: str) -> str:
    """One line per model and split; the selected model is marked."""
    header = ["model", "split", "threshold", *(title for _, title in COLUMNS)]
    lines = [
        f"Selected on validation by {criterion}: **{best}** (marked *).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in rows:
        for split in ("val", "test"):
            figures = row[split]
            name = row["name"] + (" *" if row["name"] == best else "")
            cells = [name, split, _cell(row["threshold"]), *(_cell(figures[k]) for k, _ in COLUMNS)]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(figures: dict[str, Any], path: Path, title: str) -> None:
    plt = _pyplot()
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
    plt = _pyplot()
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


TARGETS = {"balanced_accuracy": 0.85, "f1": 0.75}
"""Targets on the reference model's test patients (published: Cruz-Roa 2014 F1 0.718 / BAC 0.842;
Janowczyk & Madabhushi 2016 F1 0.765 / BAC 0.847)."""


def reproduce_command(settings: dict[str, Any]) -> str:
    """The `idcscan compare` command line that repeats a comparison with these settings."""
    parts = ["idcscan", "compare", "--data", settings["data"], "--out", settings["out"]]
    parts += ["--archs", *settings["archs"], "--balance", *settings["balance"]]
    for name in (
        "split",
        "seed",
        "width",
        "epochs",
        "batch_size",
        "lr",
        "weight_decay",
        "patience",
        "threshold_rule",
    ):
        parts += [f"--{name.replace('_', '-')}", str(settings[name])]
    if settings["threshold_rule"] == "sensitivity":
        parts += ["--min-sensitivity", str(settings["min_sensitivity"])]
    if settings.get("folds"):
        parts += ["--folds", str(settings["folds"]), "--fold", str(settings["fold"])]
    if settings.get("int8"):
        parts.append("--int8")
    return " ".join(parts)


def _figure_rows(reports: dict[str, dict[str, Any]]) -> list[str]:
    keys = (
        "n",
        "tp",
        "fp",
        "tn",
        "fn",
        "balanced_accuracy",
        "f1",
        "precision",
        "recall",
        "specificity",
        "accuracy",
        "auroc",
        "pr_auc",
    )
    lines = ["| | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 1)]
    for name, figures in reports.items():
        lines.append(f"| {name} | " + " | ".join(_cell(figures[k]) for k in keys) + " |")
    return lines


def model_card(report: dict[str, Any], metrics: dict[str, Any]) -> str:
    """A Markdown model card for the exported best model of a comparison."""
    export, split, data = report["export"], metrics["split"], metrics["data"]
    test = metrics["test"]["overall"]
    rule = metrics["threshold_rule"]
    if rule == "sensitivity":
        rule += f" (highest threshold with validation sensitivity >= {metrics['min_sensitivity']})"
    else:
        rule += " (the threshold maximising balanced accuracy on the validation patients)"
    lines = [
        f"# Model card: {export['version']}",
        "",
        f"- Architecture: {metrics['arch']} (width {metrics['width']}), adapted to 50x50 px tiles "
        "(see `idcscan/trainer/models.py`), trained from scratch.",
        f"- Class balance: {metrics['balance']}; best epoch {metrics['best_epoch']} of "
        f"{metrics['epochs_run']} run.",
        f"- Chosen among {len(report['models'])} models by {report['criterion']}.",
        f"- Decision threshold: {metrics['threshold']:.4f}, rule: {rule}.",
        f"- ONNX: {export['bytes'] / 1e6:.2f} MB, input `tiles` float32 (N, 3, 50, 50), output "
        "`idc_probability` (N,); tile contract and identity in the metadata. Checked against torch "
        f"on {export['parity_patches']} validation patches: max |difference| "
        f"{export['parity_max_abs_difference']:.1e}.",
    ]
    if "int8" in export:
        q = export["int8"]
        lines.append(
            f"- INT8 variant (static QDQ, not shipped): {q['bytes'] / 1e6:.2f} MB, accuracy change on "
            f"the validation patches {q.get('accuracy_change', float('nan')):+.4f}, max "
            f"|probability difference| {q['max_abs_difference']:.3f}."
        )
    lines += [
        "",
        "## Data it saw",
        "",
        f"Patches from `{data['root']}` (Breast Histopathology Images, 50x50 px at ~4 um/px), "
        f"patient-level split, method `{split['method']}`"
        + (
            " (the published lists where they name the patient; patients in no list train)."
            if split["method"] == "canonical"
            else "."
        ),
        "",
        "| split | patients | patches | IDC | no IDC | patient ids |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("train", "val", "test"):
        c = data[name]
        lines.append(
            f"| {name} | {c['patients']} | {c['patches']} | {c['idc']} | {c['no_idc']} | "
            f"{' '.join(split[name])} |"
        )
    lines += [
        "",
        f"Training visits {metrics['train_patches_per_epoch']} patches per epoch ({metrics['balance']})."
        " The threshold and the model were chosen on validation; the test patients were scored "
        "once, at the end.",
        "",
        "## Figures on its own test patients",
        "",
        *_figure_rows(
            {
                "all test patients": test,
                **{f"patient {p}": r for p, r in metrics["test"]["per_patient"].items()},
            }
        ),
        "",
        "Targets: "
        + ", ".join(
            f"{k} >= {v} ({'met' if test[k] >= v else 'NOT met'}: {test[k]:.3f})"
            for k, v in TARGETS.items()
        )
        + ". Published on the full 162-patient split: Cruz-Roa et al. 2014 F1 0.718 / BAC 0.842;"
        " Janowczyk & Madabhushi 2016 F1 0.765 / BAC 0.847 (other test patients: indicative only).",
        "",
        "## Figures on the validation patients",
        "",
        *_figure_rows(
            {
                "all validation patients": metrics["val"]["overall"],
                **{f"patient {p}": r for p, r in metrics["val"]["per_patient"].items()},
            }
        ),
        "",
        "## Reproduce",
        "",
        "```",
        reproduce_command(report["settings"]),
        f"cp {report['settings']['out']}/best.onnx models/idc-reference.onnx",
        "```",
        "",
        "On CPU, with the same seed, the run repeats epoch for epoch; thread scheduling can change "
        "the last digits of the weights.",
        "",
    ]
    return "\n".join(lines)
