"""`idcscan slide-rule`: slide-level figures of a cross-validated comparison, and the slide call
rule chosen on them. It spans the trainer (fold models) and the worker (assembly, scoring), so it
lives beside `cli.py`, like the demo.

Every complete patient (a whole slide's patches: more than `LARGE_PATIENT_PATCHES`) is reassembled
with `idcscan assemble` and scored by the worker's own pipeline, by the fold model that held that
patient out (threshold and temperature from its validation fold): every slide figure is out of
fold. The dataset holds no IDC-free patient, so beside each whole slide its benign part alone (its
no-IDC patches, reassembled the same way) stands in for a slide without IDC.

The rule: `idc` when at least A mm2 of tissue reaches the threshold. A is half the smallest area
called IDC on any whole slide, in whole tiles (slide sensitivity first: the smallest of a few
dozen slides is a noisy estimate of how little IDC a slide can show, hence the margin of two);
its false calls on the benign parts are reported, beside those of the previous fixed rule (two
tiles). A is written into the tile contract of `OUT/best.onnx`, which the worker's slide call
reads.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.progress import Progress

from idcscan.core.tiles import TileSpec

PREVIOUS_RULE_MM2 = 0.08  # two 200 um tiles, the seed's fixed rule
SAFETY_MARGIN = 0.5


def score_assembled(patient_dir: Path, work: Path, model: Any) -> dict[str, Any]:
    """Reassemble a patient folder into a pyramidal TIFF and score it as a worker would."""
    from idcscan.core.assemble import assemble
    from idcscan.core.labels import parse_labels
    from idcscan.core.slides import open_slide
    from idcscan.worker.evaluation import evaluate
    from idcscan.worker.pipeline import score_slide

    done = assemble(patient_dir, work / f"{patient_dir.name}.tiff")
    truth = parse_labels(done.geojson.read_bytes())
    with open_slide(done.tiff) as slide:
        score = evaluate(score_slide(slide, model), truth)
    summary: dict[str, Any] = {
        k: getattr(score.summary, k)
        for k in ("tissue_tiles", "idc_tiles", "idc_area_mm2", "max_probability")
    }
    summary["tile_area_mm2"] = score.plan.tile_area_mm2
    summary["confusion"] = score.confusion.as_dict() if score.confusion else None
    return summary


def benign_part(patient_dir: Path, work: Path) -> Path:
    """A patient folder holding only the patient's no-IDC patches (copies: slide readers do not
    follow links)."""
    folder = work / "benign" / patient_dir.name
    shutil.copytree(patient_dir / "0", folder / "0")
    return folder


def choose_min_area(whole: list[dict[str, Any]]) -> float:
    """`SAFETY_MARGIN` of the smallest area any whole slide reaches, in whole tiles (at least one)."""
    tile = whole[0]["tile_area_mm2"]
    tiles = max(1, int(SAFETY_MARGIN * min(s["idc_tiles"] for s in whole)))
    return tiles * tile


def errors_at(slides: list[dict[str, Any]], min_area: float) -> dict[str, int]:
    missed = sum(s["kind"] == "whole" and s["idc_area_mm2"] < min_area for s in slides)
    false = sum(s["kind"] == "benign" and s["idc_area_mm2"] >= min_area for s in slides)
    return {"missed_idc_slides": int(missed), "false_idc_slides": int(false)}


def update_spec(model_path: Path, **changes: Any) -> TileSpec:
    """Rewrite the tile contract in an ONNX file's metadata with `changes`."""
    import onnx

    from idcscan.core.tiles import METADATA_KEY
    from idcscan.trainer.export import set_metadata

    proto = onnx.load(str(model_path))
    current = {p.key: p.value for p in proto.metadata_props}
    spec = replace(TileSpec.from_json(current[METADATA_KEY]), **changes)
    set_metadata(proto, spec.to_metadata())
    onnx.save(proto, str(model_path))
    return spec


def plot(slides: list[dict[str, Any]], min_area: float, path: Path) -> None:
    from idcscan.trainer.report import pyplot

    plt = pyplot()
    whole = sorted((s for s in slides if s["kind"] == "whole"), key=lambda s: s["idc_area_mm2"])
    benign = {s["patient"]: s for s in slides if s["kind"] == "benign"}
    fig, ax = plt.subplots(figsize=(9, 4))
    x = range(len(whole))
    ax.bar([i - 0.2 for i in x], [s["idc_area_mm2"] for s in whole], 0.4, label="whole slide")
    ax.bar(
        [i + 0.2 for i in x],
        [benign[s["patient"]]["idc_area_mm2"] for s in whole],
        0.4,
        label="its benign part alone",
        color="tab:orange",
    )
    ax.axhline(min_area, color="crimson", linestyle="--", label=f"rule: >= {min_area:.2f} mm2")
    ax.set_xticks(list(x), [s["patient"] for s in whole], rotation=90, fontsize=7)
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set(ylabel="area called IDC (mm2)", title="Out-of-fold slide scores, reassembled slides")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(
    comparison: Path, data: Path, min_patches: int | None = None, apply: bool = True
) -> dict[str, Any]:
    """Score every complete held-out patient (more than `min_patches` patches; default
    `LARGE_PATIENT_PATCHES`), choose the rule, write the report; with `apply`, set the rule in
    the comparison's `best.onnx`."""
    from idcscan.core.onnxmodel import OnnxModel
    from idcscan.trainer.data import load_patches, patient_counts
    from idcscan.trainer.export import export_run
    from idcscan.trainer.splits import LARGE_PATIENT_PATCHES

    if min_patches is None:
        min_patches = LARGE_PATIENT_PATCHES
    report = json.loads((comparison / "comparison.json").read_text())
    if report["folds"] < 2:
        raise ValueError("slide-level figures need a cross-validated comparison (--split cv)")
    counts = patient_counts(data)
    slides: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, Progress() as progress:
        work = Path(tmp)
        todo = [
            (fold, p)
            for fold, split in enumerate(report["splits"])
            for p in split["test"]
            if sum(counts[p]) > min_patches
        ]
        task = progress.add_task("slides", total=len(todo))
        for fold in range(report["folds"]):
            patients = [p for f, p in todo if f == fold]
            if not patients:
                continue
            run_dir = comparison / report["best"] / f"fold-{fold}"
            parity = load_patches(data, patients[:1])
            model_path = work / f"fold-{fold}.onnx"
            export_run(run_dir, model_path, parity.tiles[:256])
            model = OnnxModel(model_path, provider="cpu")
            for patient in patients:
                whole = score_assembled(data / patient, work, model)
                benign = score_assembled(benign_part(data / patient, work), work / "benign", model)
                slides.append({"patient": patient, "fold": fold, "kind": "whole", **whole})
                slides.append({"patient": patient, "fold": fold, "kind": "benign", **benign})
                progress.advance(task)
    whole_slides = [s for s in slides if s["kind"] == "whole"]
    if not whole_slides:
        raise ValueError("no complete patient among the held-out folds")
    min_area = choose_min_area(whole_slides)
    result = {
        "configuration": report["best"],
        "rule": f"idc when at least {min_area:g} mm2 reaches the threshold",
        "slide_min_idc_mm2": min_area,
        "errors": errors_at(slides, min_area),
        "previous_rule": {
            "slide_min_idc_mm2": PREVIOUS_RULE_MM2,
            "errors": errors_at(slides, PREVIOUS_RULE_MM2),
        },
        "slides": slides,
    }
    (comparison / "slide-level.json").write_text(json.dumps(result, indent=2))
    (comparison / "slide-level.md").write_text(markdown(result))
    plot(slides, min_area, comparison / "slide-level.png")
    if apply:
        update_spec(comparison / "best.onnx", slide_min_idc_mm2=min_area)
    return result


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Slide-level figures",
        "",
        f"Configuration {result['configuration']}; each complete patient reassembled with "
        "`idcscan assemble` and scored by the worker's pipeline with the fold model that held it "
        "out. `benign` is the same slide with its IDC patches left out.",
        "",
        f"Rule chosen: **{result['rule']}** (slide sensitivity first). Errors: "
        f"{result['errors']['missed_idc_slides']} whole slides missed, "
        f"{result['errors']['false_idc_slides']} benign parts called IDC. The previous fixed rule "
        f"(>= {PREVIOUS_RULE_MM2} mm2): {result['previous_rule']['errors']['missed_idc_slides']} "
        f"missed, {result['previous_rule']['errors']['false_idc_slides']} false.",
        "",
        "| patient | fold | slide | tissue tiles | IDC tiles called | IDC area mm2 | max P | missed IDC (fn) | tp | fp | tn |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in result["slides"]:
        c = s["confusion"] or {}
        lines.append(
            f"| {s['patient']} | {s['fold']} | {s['kind']} | {s['tissue_tiles']} | {s['idc_tiles']} "
            f"| {s['idc_area_mm2']:.2f} | {s['max_probability']:.3f} | {c.get('fn', '-')} | "
            f"{c.get('tp', '-')} | {c.get('fp', '-')} | {c.get('tn', '-')} |"
        )
    return "\n".join(lines) + "\n"
