"""GIS outputs say the truth about their coordinates: a Shapefile written over another keeps none of
its files, a GCP-georeferenced input keeps its GCPs and CRS in the mask, and GeoJSON of a raster with
a transform but no CRS says its coordinates are map units (issue 30, point 8)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS

from rs2sam2.cli import main
from rs2sam2.vector import geojson_collection, polygons, write_vector

GCPS = [GroundControlPoint(0, 0, 500000, 5200000), GroundControlPoint(0, 300, 500150, 5200010),
        GroundControlPoint(200, 0, 499990, 5199900), GroundControlPoint(200, 300, 500140, 5199910)]


def _blob() -> np.ndarray:
    mask = np.zeros((40, 60), bool)
    mask[10:20, 10:30] = True
    return mask


def test_a_shapefile_over_an_older_one_keeps_no_stale_prj(tmp_path: Path) -> None:
    dest = tmp_path / "objects.shp"
    transform = Affine(0.5, 0, 500000, 0, -0.5, 5200000)
    write_vector(dest, polygons(_blob(), transform), "EPSG:32633", text="the tank")
    (tmp_path / "objects.QIX").write_bytes(b"an old spatial index")  # another tool's part, in capitals
    assert (tmp_path / "objects.prj").exists()
    written = write_vector(dest, polygons(_blob()), None, text="the tank")  # no CRS this time
    assert not (tmp_path / "objects.prj").exists() and not (tmp_path / "objects.QIX").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in written)
    import pyogrio

    assert pyogrio.read_info(dest)["crs"] is None


def test_geojson_of_a_raster_with_a_transform_but_no_crs_says_map_units() -> None:
    transform = Affine(0.5, 0, 1000, 0, -0.5, 2000)
    fc = geojson_collection(polygons(_blob(), transform), None, transform=transform)
    assert fc["properties"]["coordinate_space"] == "map" and fc["properties"]["source_crs"] is None
    xs = [x for x, _ in fc["features"][0]["geometry"]["coordinates"][0]]
    assert min(xs) == 1005.0  # map units of the transform, not pixels
    assert geojson_collection(polygons(_blob()), None)["properties"]["coordinate_space"] == "pixel"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from helpers_ckpt import build_checkpoint

    return build_checkpoint(tmp_path_factory.mktemp("ckpt"))


def _gcp_scene(path: Path) -> Path:
    data = np.random.default_rng(0).integers(0, 255, (3, 200, 300), dtype=np.uint8)
    with rasterio.open(path, "w", driver="GTiff", height=200, width=300, count=3, dtype="uint8", gcps=GCPS,
                       crs=CRS.from_epsg(32633)) as dst:
        dst.write(data)
    return path


@pytest.mark.parametrize("extra, offset", [([], (0, 0)), (["--window", "40", "20", "200", "150"], (20, 40)),
                                           (["--mode", "tiles", "--tile", "256"], (0, 0))])
def test_a_gcp_georeferenced_input_keeps_its_gcps_in_the_mask(checkpoint, tmp_path, extra, offset) -> None:
    scene = _gcp_scene(tmp_path / "scan.tif")
    out = tmp_path / "mask.tif"
    assert main(["predict", "--checkpoint", str(checkpoint), "--image", str(scene), "--text", "the red roof",
                 "--out", str(out), "--vector", str(tmp_path / "mask.geojson"), "-q", *extra]) == 0
    with rasterio.open(out) as mask:
        points, crs = mask.gcps
        assert crs == CRS.from_epsg(32633) and mask.transform.is_identity
    row_off, col_off = offset
    assert [(p.row, p.col, p.x, p.y) for p in points] == [(g.row - row_off, g.col - col_off, g.x, g.y) for g in GCPS]
    fc = json.loads((tmp_path / "mask.geojson").read_text())
    assert fc["properties"]["coordinate_space"] == "pixel"  # polygons of a GCP grid stay in pixels


def test_a_bbox_on_a_gcp_raster_is_refused_naming_gdalwarp() -> None:
    from rs2sam2.geo import AreaError, area_of_interest
    from rs2sam2.imageio import RasterInfo

    info = RasterInfo(height=200, width=300, gcps=tuple((g.row, g.col, g.x, g.y, 0.0) for g in GCPS),
                      gcp_crs="EPSG:32633")
    with pytest.raises(AreaError, match=r"ground control points.*gdalwarp"):
        area_of_interest(info, bbox=(500000, 5199950, 500050, 5200000))
    assert area_of_interest(info, window=(10, 20, 30, 40)) == ((10, 20, 30, 40), False)
