"""Tiling in physical units, tissue, ground truth per tile, and the scoring pipeline end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from idcscan.core.errors import InvalidInput
from idcscan.core.labels import UNLABELLED, GridGeometry, LabelledRect, from_regions, parse_labels
from idcscan.core.onnxmodel import OnnxModel
from idcscan.core.slides import Slide, open_slide
from idcscan.core.summary import SlideCall
from idcscan.core.tiles import TileSpec, pad_tile
from idcscan.worker import outputs
from idcscan.worker.evaluation import confusion_of, evaluate, ground_truth
from idcscan.worker.pipeline import Batch, prefetch, score_slide
from idcscan.worker.tiling import cut_tiles, plan_tiling
from tests.conftest import SAMPLE_PATIENTS, SAMPLE_SVS


class FakePyramid(Slide):
    """Levels without pixels, to test the level choice."""

    def __init__(
        self, mpp: float, downsamples: tuple[float, ...], size: tuple[int, int] = (100_000, 80_000)
    ):
        self.format, self.mpp = "fake", mpp
        self.level_downsamples = downsamples
        self.level_dimensions = tuple((int(size[0] / d), int(size[1] / d)) for d in downsamples)

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        return np.full((size[1], size[0], 3), 255, np.uint8)


@pytest.mark.parametrize(
    ("mpp", "downsamples", "level", "level_mpp"),
    [
        (0.25, (1.0, 4.0, 16.0, 64.0), 2, 4.0),  # 40x: level at exactly 4 um/px
        (0.25, (1.0, 4.0, 32.0), 1, 1.0),  # nearest above the scale, never coarser
        (0.5, (1.0, 4.0, 16.0), 1, 2.0),
        (4.0, (1.0, 2.0), 0, 4.0),
    ],
)
def test_level_nearest_above_the_model_scale(
    mpp: float, downsamples: tuple[float, ...], level: int, level_mpp: float
) -> None:
    plan = plan_tiling(FakePyramid(mpp, downsamples), TileSpec())
    assert (plan.level, plan.level_mpp) == (level, pytest.approx(level_mpp))
    assert plan.effective_mpp == pytest.approx(4.0, rel=1e-3)
    assert plan.grid.tile0 == pytest.approx(50 * 4.0 / mpp)


def test_slide_coarser_than_the_model_is_refused() -> None:
    with pytest.raises(InvalidInput) as info:
        plan_tiling(FakePyramid(8.0, (1.0,)), TileSpec())
    assert info.value.code == "resolution-too-low"


def test_cut_tiles_matches_a_loop() -> None:
    pixels = np.random.default_rng(0).integers(0, 255, (130, 180, 3), dtype=np.uint8)
    for tile, stride in ((50, 50), (50, 40)):
        nr, nc = (130 - tile) // stride + 1, (180 - tile) // stride + 1
        tiles = cut_tiles(pixels, nr, nc, tile, stride)
        for r in range(nr):
            for c in range(nc):
                np.testing.assert_array_equal(
                    tiles[r, c],
                    pixels[r * stride : r * stride + tile, c * stride : c * stride + tile],
                )


def test_tiles_of_an_assembled_slide_are_the_dataset_patches(
    assembled: Path, tiny_model: Path
) -> None:
    """The worker's path gives the model exactly the patches the trainer sees: same probabilities."""
    model = OnnxModel(tiny_model, "cpu", 1)
    with open_slide(assembled) as slide:
        score = score_slide(slide, model, batch_size=64)
    by_tile = {
        (int(r), int(c)): float(p)
        for r, c, p in zip(score.rows, score.cols, score.probability, strict=True)
    }
    patches, positions = [], []
    for path in sorted((SAMPLE_PATIENTS / "8916").glob("*/*.png")):
        name = path.stem.split("_")
        x, y = int(name[2][1:]) - 1, int(name[3][1:]) - 1
        patches.append(pad_tile(np.asarray(Image.open(path).convert("RGB")), 50))
        positions.append((y // 50, x // 50))
    expected = model.predict(np.stack(patches))
    scored = [(pos, p) for pos, p in zip(positions, expected, strict=True) if pos in by_tile]
    assert len(scored) >= 169  # the tissue mask keeps (almost) every patch the dataset cut
    for pos, p in scored:
        assert by_tile[pos] == pytest.approx(float(p), abs=1e-5)
    assert score.plan.level == 0 and score.plan.effective_mpp == pytest.approx(4.0)
    # The patch folder itself scores the same and carries its own ground truth.
    with open_slide(SAMPLE_PATIENTS / "8916") as folder:
        direct = score_slide(folder, model, batch_size=64)
        assert direct.confusion is None  # scoring only; evaluation is the caller's step
        truth = ground_truth(folder, None)
        assert truth is not None
        direct = evaluate(direct, truth)
    np.testing.assert_allclose(direct.probability, score.probability, atol=1e-6)
    assert direct.confusion is not None and direct.confusion.tp + direct.confusion.fn == 111


def test_slide_with_no_tissue_scores_zero_tiles(tmp_path: Path, tiny_model: Path) -> None:
    path = tmp_path / "blank.png"
    Image.new("RGB", (400, 300), "white").save(path)
    with open_slide(path, mpp=4.0) as slide:
        score = score_slide(slide, OnnxModel(tiny_model, "cpu", 1))
    assert len(score.rows) == 0
    assert score.summary.slide_call == SlideCall.NO_TISSUE
    assert score.summary.max_probability is None
    files = outputs.render(score)
    assert json.loads(files[outputs.GEOJSON])["features"] == []
    assert files[outputs.TILES_CSV].decode().strip() == "row,col,x,y,probability,label"


def test_svs_is_tiled_at_the_model_scale(tiny_model: Path) -> None:
    with open_slide(SAMPLE_SVS) as slide:
        score = score_slide(slide, OnnxModel(tiny_model, "cpu", 1))
    # 2220 x 2967 px at 0.499 um/px is 1108 x 1481 um: 6 x 8 tiles of 200 um.
    assert (score.plan.grid.cols, score.plan.grid.rows) == (6, 8)
    assert 0 < len(score.rows) <= 48
    assert score.plan.effective_mpp == pytest.approx(4.0, rel=1e-2)


def test_ground_truth_half_coverage_rule() -> None:
    grid = GridGeometry(rows=2, cols=3, tile0=100.0, stride0=100.0)
    # A square covering 60% of tile (0,0) and 40% of tile (0,1).
    geo = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [[[40, 0], [140, 0], [140, 100], [40, 100], [40, 0]]],
                },
                "properties": {"objectType": "annotation", "classification": {"name": "IDC"}},
            },
            {
                "type": "Feature",
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [[[200, 100], [300, 100], [300, 200], [200, 200], [200, 100]]],
                },
                "properties": {"classification": {"name": "Stroma"}},
            },
        ],
    }
    labels = parse_labels(json.dumps(geo).encode()).tile_labels(grid)
    np.testing.assert_array_equal(labels, [[1, 0, 0], [0, 0, 0]])
    csv_rows = parse_labels(
        b"x,y,width,height,label\n0,100,100,100,1\n100,100,100,100,0\n"
    ).tile_labels(grid)
    np.testing.assert_array_equal(csv_rows, [[-1, -1, -1], [1, 0, -1]])
    cells = parse_labels(b"row,col,label\n0,2,1\n").tile_labels(grid)
    np.testing.assert_array_equal(cells, [[-1, -1, 1], [-1, -1, -1]])
    with pytest.raises(InvalidInput):
        parse_labels(b"a,b\n1,2\n")


def test_confusion_counts_skipped_idc_as_missed() -> None:
    labels = np.array([[1, 0, 1], [-1, 0, 1]], dtype=np.int8)
    rows, cols = np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])
    confusion = confusion_of(labels, rows, cols, np.array([0.9, 0.8, 0.7, 0.1], np.float32), 0.5)
    # (0,0) tp, (0,1) fp, (1,0) unlabelled, (1,1) tn; (0,2) and (1,2) IDC never scored: fn.
    assert (confusion.tp, confusion.fp, confusion.tn, confusion.fn) == (1, 1, 1, 2)


def test_geojson_regions_cover_exactly_the_idc_tiles(assembled: Path, tiny_model: Path) -> None:
    with open_slide(assembled) as slide:
        score = score_slide(slide, OnnxModel(tiny_model, "cpu", 1))
    doc = outputs.geojson(score)
    covered = set()
    for feature in doc["features"]:
        assert feature["properties"]["classification"]["name"] == "IDC"
        assert feature["properties"]["objectType"] == "annotation"
        (ring,) = feature["geometry"]["coordinates"]
        x0, y0 = ring[0]
        x1, y1 = ring[2]
        covered |= {(r, c) for r in range(y0 // 50, y1 // 50) for c in range(x0 // 50, x1 // 50)}
    positive = {
        (int(r), int(c))
        for r, c, p in zip(score.rows, score.cols, score.probability, strict=True)
        if p >= 0.5
    }
    assert covered == positive
    png = Image.open(__import__("io").BytesIO(outputs.heatmap_png(score)))
    assert png.format == "PNG" and png.width >= 300


def test_prefetch_raises_the_readers_error_and_stops() -> None:
    def failing():  # type: ignore[no-untyped-def]
        yield Batch(np.zeros(1), np.zeros(1), np.zeros(1), np.zeros((1, 4)))
        raise InvalidInput("decoder said no", "truncated-slide")

    seen = []
    with pytest.raises(InvalidInput, match="decoder said no"):
        for batch in prefetch(failing(), 2):
            seen.append(batch)
    assert len(seen) == 1


def test_score_command_writes_outputs_without_torch(
    tmp_path: Path, tiny_model: Path, assembled: Path
) -> None:
    script = (
        "import sys, json\n"
        "from idcscan.cli import main\n"
        f"code = main(['score', {str(assembled)!r}, '--model', {str(tiny_model)!r}, '--labels', "
        f"{str(assembled.with_suffix('.geojson'))!r}, '--out', {str(tmp_path / 'out')!r}, '--json'])\n"
        "assert 'torch' not in sys.modules, 'scoring imported torch'\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (
        summary["tissue_tiles"] >= 169
        and summary["confusion"]["tp"] + summary["confusion"]["fn"] == 111
    )
    assert {p.name for p in (tmp_path / "out").iterdir()} == {
        "heatmap.png",
        "annotations.geojson",
        "tiles.csv",
        "summary.json",
    }


@pytest.mark.parametrize(
    ("min_mm2", "idc_tiles", "call"),
    [
        (0.08, 1, "no_idc"),
        (0.08, 2, "idc"),
        (0.4, 9, "no_idc"),
        (0.4, 10, "idc"),
        (0.0, 0, "no_idc"),
    ],
)
def test_the_slide_call_follows_the_models_own_rule(
    min_mm2: float, idc_tiles: int, call: str
) -> None:
    from idcscan.worker.pipeline import summarise

    spec = TileSpec(threshold=0.5, slide_min_idc_mm2=min_mm2)  # 200 um tiles: 0.04 mm2 each
    plan = plan_tiling(FakePyramid(4.0, (1.0,), size=(1000, 1000)), spec)
    probability = np.where(np.arange(40) < idc_tiles, 0.9, 0.1).astype(np.float32)
    summary = summarise(plan, probability)
    assert summary.slide_call == call
    assert summary.idc_area_mm2 == pytest.approx(idc_tiles * 0.04)
    assert f"{min_mm2:g} mm2" in summary.call_rule


def test_a_patch_thinner_than_a_raster_pixel_is_no_error() -> None:
    """A dataset's edge patch a few pixels high, rounded to an empty rectangle on the raster,
    covers no tile; it used to make Pillow refuse the rectangle and the whole slide fail."""
    grid = GridGeometry(rows=3, cols=3, tile0=50.0, stride0=50.0)
    truth = from_regions(
        (
            LabelledRect(0, 0, 50, 50, 1),
            LabelledRect(0, 52, 50, 1, 0),
            LabelledRect(52, 0, 1, 50, 1),
        )
    )
    labels = truth.tile_labels(grid)
    assert labels[0, 0] == 1 and labels[1, 0] == UNLABELLED and labels[0, 1] == UNLABELLED
