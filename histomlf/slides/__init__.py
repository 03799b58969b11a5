"""Whole-slide images: read a slide at a model's scale, mask its tissue, score tiles, write maps.

One module per job: `reader` (OpenSlide, µm/px, which level to read), `tissue` (the mask and the
ink filter on a thumbnail), `grid` (tile positions and stride), `scoring` (bounded batches
read by a thread pool of OpenSlide handles), `outputs` (heatmap and tissue PNG, tiles.csv,
GeoJSON, IDC regions, summary), `predict` (one slide end to end: a plain function of the slide
path, the model, the options and the output folder), `stitch` (pyramidal TIFFs from
Kaggle-layout patches, for tests and benchmarks). Nothing here imports MLflow: `tracking/`
turns a loaded model into a `SlideModel` and logs the result.
"""
