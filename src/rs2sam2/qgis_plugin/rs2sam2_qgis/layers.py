"""The raster the ``rs2sam2`` program reads for a QGIS layer.

A layer backed by a plain GeoTIFF file is passed by its path (with the extent as ``--bbox`` in the
layer's CRS). Any other layer -- a VRT, a GeoPackage raster, a WMS or other web layer, a file with
open options -- is exported to a temporary GeoTIFF holding only the extent asked for, on the layer's
own pixel grid (the extent is snapped outward to whole pixels), so the mask lands on that grid.
A layer without a pixel grid of its own (WMS) needs an extent and is rendered at ``WEB_SIDE`` pixels
on its longer side.
"""

from __future__ import annotations

import math
import os

from qgis.core import (
    QgsFeatureRequest,
    QgsProcessingException,
    QgsRasterFileWriter,
    QgsRasterInterface,
    QgsRasterLayer,
    QgsRasterPipe,
    QgsRectangle,
    QgsVectorLayer,
)

PLAIN_SUFFIXES = (".tif", ".tiff")
WEB_SIDE = 2048


def plain_path(layer: QgsRasterLayer) -> str | None:
    """The file behind ``layer`` when it is a plain GeoTIFF the program can read as it is, else None."""
    if layer.providerType() != "gdal":
        return None
    path = layer.source()
    if os.path.isfile(path) and path.lower().endswith(PLAIN_SUFFIXES):
        return path
    return None


def _snapped(layer: QgsRasterLayer, extent: QgsRectangle) -> tuple[QgsRectangle, int, int]:
    """``extent`` grown to whole pixels of ``layer`` and clipped to it, and its width and height."""
    full = layer.extent()
    px, py = layer.rasterUnitsPerPixelX(), layer.rasterUnitsPerPixelY()
    c0 = max(0, math.floor((extent.xMinimum() - full.xMinimum()) / px + 1e-9))
    c1 = min(layer.width(), math.ceil((extent.xMaximum() - full.xMinimum()) / px - 1e-9))
    r0 = max(0, math.floor((full.yMaximum() - extent.yMaximum()) / py + 1e-9))
    r1 = min(layer.height(), math.ceil((full.yMaximum() - extent.yMinimum()) / py - 1e-9))
    if c1 <= c0 or r1 <= r0:
        raise QgsProcessingException(f"the extent does not overlap the layer {layer.name()!r}")
    box = QgsRectangle(full.xMinimum() + c0 * px, full.yMaximum() - r1 * py,
                       full.xMinimum() + c1 * px, full.yMaximum() - r0 * py)
    return box, c1 - c0, r1 - r0


def _grid(layer: QgsRasterLayer, extent: QgsRectangle | None) -> tuple[QgsRectangle, int, int]:
    has_grid = bool(layer.dataProvider().capabilities() & QgsRasterInterface.Size)
    if has_grid:
        return _snapped(layer, extent if extent is not None else layer.extent())
    if extent is None or extent.isEmpty():
        raise QgsProcessingException(f"the layer {layer.name()!r} has no pixel grid of its own (a web layer): "
                                     "give an extent")
    scale = WEB_SIDE / max(extent.width(), extent.height())
    return extent, max(1, round(extent.width() * scale)), max(1, round(extent.height() * scale))


def export_geotiff(layer: QgsRasterLayer, extent: QgsRectangle | None, path: str, context) -> str:
    """Write the ``extent`` of ``layer`` (in the layer's CRS; None: all of it) to the GeoTIFF ``path``."""
    box, width, height = _grid(layer, extent)
    provider = layer.dataProvider()
    pipe = QgsRasterPipe()
    if not pipe.set(provider.clone()):
        raise QgsProcessingException(f"cannot read the layer {layer.name()!r} for export")
    writer = QgsRasterFileWriter(path)
    writer.setOutputFormat("GTiff")
    status = writer.writeRaster(pipe, width, height, box, layer.crs(), context.transformContext())
    if status != QgsRasterFileWriter.NoError:
        raise QgsProcessingException(f"cannot export the layer {layer.name()!r} to {path} (error {status})")
    return path


def name_layer_source(vector: str, layer: QgsRasterLayer) -> None:
    """Make the ``image`` provenance field of the polygons in ``vector`` name ``layer``'s source (without
    credentials) instead of the temporary GeoTIFF the program read, which is gone once the algorithm ends."""
    polygons = QgsVectorLayer(vector, "polygons", "ogr")
    field = polygons.fields().indexOf("image") if polygons.isValid() else -1
    if field < 0:
        return
    source = layer.publicSource()
    polygons.startEditing()
    for feature in polygons.getFeatures(QgsFeatureRequest().setNoAttributes().setFlags(QgsFeatureRequest.NoGeometry)):
        polygons.changeAttributeValue(feature.id(), field, source)
    if not polygons.commitChanges():
        raise QgsProcessingException(f"cannot write the layer's name into {vector}: "
                                     f"{'; '.join(polygons.commitErrors())}")
