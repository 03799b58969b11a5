"""Whole-slide building blocks on real and stitched slides, without a model: reading and µm/px,
level choice, refusals in one line, the tissue mask and ink filter, the grid, GeoJSON shapes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from histomlf.schema import PROB_COLUMN
from histomlf.slides import outputs
from histomlf.slides.grid import stride_px, tile_grid
from histomlf.slides.reader import (
    SlideError,
    find_slides,
    open_slide,
    plan_read,
    read_patch,
    read_thumbnail,
    slide_mpp,
    thumbnail_downsample,
)
from histomlf.slides.stitch import patient_canvas
from histomlf.slides.tissue import ink_mask, tile_shares, tissue_mask


def test_stitched_slide_reads_back_bit_exact_as_generic_tiff(stitched_slides) -> None:
    slide = open_slide(stitched_slides.plain)
    canvas = patient_canvas(stitched_slides.patient_dir)
    assert slide.properties["openslide.vendor"] == "generic-tiff"
    assert slide.level_count == 3
    assert slide_mpp(slide) == (pytest.approx(4.0), "openslide")
    whole = np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB"))
    assert np.array_equal(whole, canvas)


def test_level_choice_reads_the_x2_level_of_a_2um_slide(stitched_slides) -> None:
    slide = open_slide(stitched_slides.fine)
    mpp, _ = slide_mpp(slide)
    plan = plan_read(mpp, tuple(slide.level_downsamples), 50, 4.0)
    assert mpp == pytest.approx(2.0)
    assert (plan.level, plan.level_downsample, plan.region_px, plan.factor) == (1, 2.0, 50, 1.0)
    assert plan.tile_px == pytest.approx(100.0)


def test_x8_slide_is_read_at_level_0_and_averaged_back_to_the_original_pixels(
    stitched_slides,
) -> None:
    slide = open_slide(stitched_slides.x8)
    mpp, _ = slide_mpp(slide)
    plan = plan_read(mpp, tuple(slide.level_downsamples), 50, 4.0)
    assert (plan.level, plan.region_px, plan.factor) == (0, 400, 8.0)  # 2 µm level is too fine
    canvas = patient_canvas(stitched_slides.resample_dir)
    x, y = 250, 150  # a patch of the compact patient
    patch = read_patch(slide, plan, x * 8, y * 8)
    assert np.array_equal(patch, canvas[y : y + 50, x : x + 50])


def test_plan_refuses_a_slide_coarser_than_the_model(real_slides) -> None:
    slide = open_slide(real_slides.boxes)
    mpp, _ = slide_mpp(slide)
    with pytest.raises(SlideError, match="coarser") as info:
        plan_read(mpp, tuple(slide.level_downsamples), 50, 4.0)
    assert "\n" not in str(info.value)


def test_no_resolution_tags_is_one_line_naming_slide_mpp(stitched_slides) -> None:
    slide = open_slide(stitched_slides.no_resolution)
    with pytest.raises(SlideError, match="--slide-mpp") as info:
        slide_mpp(slide)
    assert "\n" not in str(info.value)
    assert slide_mpp(slide, 4.0) == (4.0, "override")


@pytest.mark.parametrize("name", ["unopenable", "not_a_slide"])
def test_broken_files_are_one_line_errors(real_slides, tmp_path, name) -> None:
    path = getattr(real_slides, name, None)
    if path is None:
        path = tmp_path / "notes.svs"
        path.write_text("a text file renamed .svs\n")
    with pytest.raises(SlideError) as info:
        open_slide(path)
    assert path.name in str(info.value) and "\n" not in str(info.value)


def test_small_svs_reads_its_format_but_is_smaller_than_one_tile(real_slides) -> None:
    slide = open_slide(real_slides.small)
    mpp, source = slide_mpp(slide)
    assert (slide.dimensions, source) == ((16, 16), "openslide")
    plan = plan_read(mpp, tuple(slide.level_downsamples), 50, 4.0)
    patch = read_patch(slide, plan, 0, 0)
    assert patch.shape == (50, 50, 3)
    # Beyond the 16x16 px (0.6 % of the 401 px tile) the tile is white, as a Kaggle border patch.
    assert (patch[5:, 5:] == 255).all()


def test_cmu_tissue_mask_keeps_tissue_and_leaves_glass(real_slides) -> None:
    """CMU-1's region: one vertical strip of skin tissue over ~40 % of the frame (looked at:
    tissue.png), white glass on both sides. The share range allows the pale dermis edge."""
    slide = open_slide(real_slides.cmu)
    mpp, _ = slide_mpp(slide)
    thumb = read_thumbnail(slide, mpp, thumbnail_downsample(*slide.dimensions, mpp, 2.0))
    mask = tissue_mask(thumb.rgb, thumb.mpp)
    assert 0.30 <= mask.tissue.mean() <= 0.48
    assert not mask.ink.any()  # no marker on this slide; nuclei are not ink
    left_glass = thumb.rgb[:, : thumb.rgb.shape[1] // 5]
    assert mask.tissue[:, : thumb.rgb.shape[1] // 5].mean() < 0.05
    assert left_glass.mean() > 220


def test_ink_filter_takes_out_a_synthetic_green_and_blue_stroke() -> None:
    """A synthetic H&E field with a green and a blue marker stroke and a black dot: the
    strokes are stained (saturated) but flagged as ink; the H&E around them is not."""
    rng = np.random.default_rng(0)
    image = np.full((400, 400, 3), 245, np.uint8)
    tissue = np.zeros((400, 400), bool)
    tissue[40:360, 40:360] = True
    pink = np.array([225, 140, 190]) + rng.normal(0, 8, (400, 400, 3))
    image[tissue] = np.clip(pink[tissue], 0, 255)
    nuclei = rng.random((400, 400)) < 0.02
    image[tissue & nuclei] = (70, 40, 120)  # haematoxylin-dark nuclei: small, not ink
    image[100:130, 60:340] = (40, 150, 70)  # green marker
    image[250:280, 60:340] = (40, 60, 170)  # blue marker
    mask = tissue_mask(image, 2.0)  # 2 µm/px: strokes 60 µm wide
    for rows in (slice(105, 125), slice(255, 275)):
        assert mask.ink[rows, 80:320].mean() > 0.9
        assert mask.stained[rows, 80:320].mean() > 0.9
    assert mask.tissue[170:230, 80:320].mean() > 0.95
    assert not ink_mask(image[170:230, 80:320], 2.0).any()
    # A 60 µm tile on the green stroke is stained but not tissue: dropped by the ink filter.
    xs, ys = np.array([200, 200]), np.array([200, 400])  # level-0 px at 1 µm/px, mask 2 µm/px
    stained = tile_shares(mask.stained, xs, ys, 60.0, 2.0)
    kept = tile_shares(mask.tissue, xs, ys, 60.0, 2.0)
    assert stained[0] > 0.9 and kept[0] < 0.1  # on the stroke (rows 100-130 of the mask)
    assert stained[1] > 0.9 and kept[1] > 0.9  # plain H&E


def test_grid_strides_and_tile_shares() -> None:
    grid = tile_grid(1000, 520, 200.0)
    assert (grid.cols, grid.rows, len(grid)) == (5, 3, 15)
    assert list(grid.heights(520)[-5:]) == [120] * 5
    half = tile_grid(1000, 520, 200.0, stride_px(25, 50, 200.0))
    assert (half.cols, half.rows) == (10, 6)
    with pytest.raises(ValueError, match="--stride"):
        stride_px(60, 50, 200.0)
    mask = np.zeros((52, 100), bool)
    mask[:, :50] = True  # left half tissue, at 10 level-0 px per mask px
    shares = tile_shares(mask, grid.xs, grid.ys, 200.0, 10.0)
    assert shares.reshape(3, 5)[0].tolist() == [1.0, 1.0, 0.5, 0.0, 0.0]
    assert shares.reshape(3, 5)[2, 0] == pytest.approx(0.6)  # 120 of 200 rows on the slide


def test_geojson_tiles_and_regions_are_valid_and_inside_the_slide() -> None:
    import shapely
    from shapely.geometry import box, shape

    xs = np.array([0, 200, 400, 0, 200, 800])
    ys = np.array([0, 0, 0, 200, 200, 900])
    tiles = outputs.tiles_frame(
        xs, ys, np.minimum(xs + 200, 950) - xs, np.minimum(ys + 200, 1000) - ys,
        np.array([0.9, 0.8, 0.1, 0.7, 0.2, 0.95]), 0.5, np.ones(6),
    )  # fmt: skip
    collection = json.loads(json.dumps(outputs.tiles_geojson(tiles)))
    assert len(collection["features"]) == len(tiles)
    first = collection["features"][0]
    assert first["properties"]["objectType"] == "tile"
    assert first["properties"]["measurements"][PROB_COLUMN] == pytest.approx(0.9)
    bounds = box(0, 0, 950, 1000)
    for feature in collection["features"]:
        geometry = shape(feature["geometry"])
        assert geometry.is_valid and bounds.covers(geometry)
    regions, foci = outputs.idc_regions(tiles, 950, 1000, mpp=4.0)
    polygons = [shape(f["geometry"]) for f in regions["features"]]
    assert len(polygons) == 2 and all(p.is_valid and bounds.covers(p) for p in polygons)
    positive_area = float((tiles["width"] * tiles["height"])[tiles["label"] == 1].sum())
    assert sum(p.area for p in polygons) == pytest.approx(positive_area)
    assert regions["features"][0]["properties"]["classification"]["name"] == "IDC"
    assert foci[0][0] == pytest.approx(3 * 200 * 200 * 16.0)  # 3 tiles x 200² px x (4 µm)²
    assert shapely.union_all(polygons).area == pytest.approx(positive_area)


def test_heat_raster_averages_overlapping_tiles_and_leaves_the_rest_blank() -> None:
    tiles = pd.DataFrame(
        {"minx": [0, 10], "miny": [0, 0], "width": [20, 20], "height": [20, 20],
         PROB_COLUMN: [0.2, 0.6]}
    )  # fmt: skip
    heat = outputs.heat_raster(tiles, (4, 8), 5.0)
    assert heat[0, 0] == pytest.approx(0.2) and heat[0, 3] == pytest.approx(0.4)
    assert heat[0, 5] == pytest.approx(0.6) and np.isnan(heat[0, 7])


def test_find_slides_lists_slide_files_of_a_folder(real_slides, tmp_path) -> None:
    assert find_slides(real_slides.cmu) == [real_slides.cmu]
    with pytest.raises(SlideError, match="no slide files"):
        find_slides(tmp_path)


def test_slide_synth_writes_a_synthetic_slide_openslide_reads(tmp_path) -> None:
    from study_store import invoke_cli

    out = tmp_path / "synthetic.tif"
    invoke_cli("slide", "synth", str(out), "--size-px", "2400", "--mpp", "1")
    slide = open_slide(out)
    assert slide.dimensions == (2400, 2400) and slide.level_downsamples == (1.0, 4.0)
    assert slide_mpp(slide) == (pytest.approx(1.0), "openslide")
    thumb = read_thumbnail(slide, 1.0, 4.0)
    assert 0.1 < tissue_mask(thumb.rgb, thumb.mpp).tissue.mean() < 0.6  # tissue on glass
