"""The Processing algorithms: "Segment by sentence" and "Segment many".

Each builds an ``rs2sam2 predict`` command line, runs the user's ``rs2sam2`` program
(:mod:`.runner`) and maps what it reports to the Processing feedback: progress from its
``--progress json`` lines, its warnings as messages, its one-line user error (exit status 2) as the
algorithm's error, Cancel as the end of the program. Layers the program cannot read as they are
are exported to temporary GeoTIFFs first (:mod:`.layers`), removed when the algorithm ends.
"""

from __future__ import annotations

import csv
import os
import re
import tempfile

from processing.core.ProcessingConfig import ProcessingConfig
from qgis.core import (
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingOutputMultipleLayers,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterMatrix,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
    QgsProcessingUtils,
)

from .layers import export_geotiff, name_layer_source, plain_path
from .runner import Canceled, Feedback, ProgramError, find_program, run

PROGRAM_SETTING = "RS2SAM2_PROGRAM"
MODES = ("scene", "tiles", "whole")  # as rs2sam2 predict --mode; scene is its default
PRECISIONS = ("auto", "fp32", "bf16", "int8")
CHECKPOINT_HELP = "Checkpoint: a folder, a weights file or a Hugging Face Hub id"


def _feedback(feedback) -> Feedback:
    """The runner's callbacks on a Processing feedback object."""
    return Feedback(progress=feedback.setProgress, info=feedback.pushInfo, warning=feedback.pushWarning,
                    canceled=feedback.isCanceled,
                    started=lambda pid: feedback.pushDebugInfo(f"rs2sam2 process {pid}"))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:40] or "mask"


class _PredictAlgorithm(QgsProcessingAlgorithm):
    """What both algorithms share: the model parameters and the run of ``rs2sam2 predict``."""

    def group(self):
        return "Segment"

    def groupId(self):
        return "segment"

    def _add_model_parameters(self) -> None:
        self.addParameter(QgsProcessingParameterString("CHECKPOINT", CHECKPOINT_HELP))
        self.addParameter(QgsProcessingParameterEnum("MODE", "Mode (as rs2sam2 predict --mode)", options=list(MODES),
                                                     defaultValue=0))
        self.addParameter(QgsProcessingParameterNumber("TILE", "Tile size in pixels (mode tiles; empty: the "
                                                       "model input)", minValue=16, optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            "THRESHOLD", "Threshold on the mask logit (0.5: the published rule; 0: probability 0.5)",
            QgsProcessingParameterNumber.Double, defaultValue=0.5))
        self.addParameter(QgsProcessingParameterBoolean(
            "COLOUR_CHECK", "Check a colour word of the sentence against the pixels (mode scene; off for "
            "false-colour or single-band layers)", defaultValue=True))
        self.addParameter(QgsProcessingParameterString("DEVICE", "Device (auto, cpu, cuda, cuda:N)",
                                                       defaultValue="auto"))
        self.addParameter(QgsProcessingParameterEnum("PRECISION", "Precision", options=list(PRECISIONS),
                                                     defaultValue=0))

    def _model_arguments(self, parameters, context) -> list[str]:
        mode = MODES[self.parameterAsEnum(parameters, "MODE", context)]
        args = ["--checkpoint", self.parameterAsString(parameters, "CHECKPOINT", context), "--mode", mode,
                "--threshold", repr(self.parameterAsDouble(parameters, "THRESHOLD", context)),
                "--device", self.parameterAsString(parameters, "DEVICE", context).strip() or "auto",
                "--precision", PRECISIONS[self.parameterAsEnum(parameters, "PRECISION", context)]]
        if not self.parameterAsBool(parameters, "COLOUR_CHECK", context):
            args.append("--no-colour-check")
        if mode == "tiles" and parameters.get("TILE") not in (None, ""):
            args += ["--tile", str(self.parameterAsInt(parameters, "TILE", context))]
        return args

    def _extent(self, parameters, context, layer):
        """The optional extent in ``layer``'s CRS, or None."""
        if parameters.get("EXTENT") in (None, ""):
            return None
        extent = self.parameterAsExtent(parameters, "EXTENT", context, layer.crs())
        return None if extent.isNull() else extent

    def _predict(self, arguments: list[str], feedback) -> None:
        program = find_program(ProcessingConfig.getSetting(PROGRAM_SETTING) or None)
        command = [program, "predict", *arguments, "--progress", "json"]
        feedback.pushCommandInfo(" ".join(command))
        try:
            run(command, _feedback(feedback))
        except (ProgramError, Canceled) as exc:
            raise QgsProcessingException(str(exc)) from None

    def createInstance(self):
        return type(self)()


class SegmentBySentence(_PredictAlgorithm):
    """One raster layer, one sentence: a mask raster on the layer's grid and its polygons."""

    def name(self):
        return "segment_by_sentence"

    def displayName(self):
        return "Segment by sentence"

    def shortHelpString(self):
        return ("Segments the object a sentence describes (\"the white storage tank next to the road\") in a "
                "raster layer with an RS2-SAM2 checkpoint, by running the rs2sam2 program (its path is a "
                "provider setting; by default it is found on PATH). Outputs a mask raster (255 = object) on "
                "the layer's pixel grid and its polygons with the fields rs2sam2 predict --vector writes. "
                "A layer that is not a plain GeoTIFF file (VRT, GeoPackage, WMS) is exported to a temporary "
                "GeoTIFF of the extent first.")

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterRasterLayer("INPUT", "Raster layer"))
        self.addParameter(QgsProcessingParameterString("SENTENCE", "Sentence"))
        self.addParameter(QgsProcessingParameterExtent("EXTENT", "Extent (default: the whole layer)",
                                                       optional=True))
        self._add_model_parameters()
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", "Mask"))
        self.addParameter(QgsProcessingParameterVectorDestination("VECTOR", "Polygons",
                                                                  QgsProcessing.TypeVectorPolygon))

    def processAlgorithm(self, parameters, context, feedback):
        layer = self.parameterAsRasterLayer(parameters, "INPUT", context)
        if layer is None:
            raise QgsProcessingException(self.invalidRasterError(parameters, "INPUT"))
        mask = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        vector = self.parameterAsOutputLayer(parameters, "VECTOR", context)
        arguments = ["--text", self.parameterAsString(parameters, "SENTENCE", context), "--out", mask,
                     "--vector", vector, *self._model_arguments(parameters, context)]
        extent = self._extent(parameters, context, layer)
        with tempfile.TemporaryDirectory(prefix="rs2sam2-qgis-") as tmp:
            image = plain_path(layer)
            if image is None:
                image = export_geotiff(layer, extent, os.path.join(tmp, "layer.tif"), context)
            elif extent is not None:
                arguments += ["--bbox", *(repr(v) for v in (extent.xMinimum(), extent.yMinimum(),
                                                            extent.xMaximum(), extent.yMaximum()))]
            self._predict(["--image", image, *arguments], feedback)
        if image.startswith(tmp):
            name_layer_source(vector, layer)
        return {"OUTPUT": mask, "VECTOR": vector}


class SegmentMany(_PredictAlgorithm):
    """A table of layer-and-sentence rows, run as one ``rs2sam2 predict --batch``."""

    def name(self):
        return "segment_many"

    def displayName(self):
        return "Segment many"

    def shortHelpString(self):
        return ("Segments many objects at once: each row of the table names a raster layer (its name, id or "
                "file) and a sentence. The model is loaded once; each layer is read once however many "
                "sentences ask about it. Writes, per row, a mask GeoTIFF and a GeoPackage of its polygons "
                "into the output folder, named by row number and sentence.")

    def initAlgorithm(self, config=None):
        self.addParameter(QgsProcessingParameterMatrix("ROWS", "Layers and sentences", numberRows=1,
                                                       headers=["Layer (name, id or file)", "Sentence"]))
        self.addParameter(QgsProcessingParameterExtent("EXTENT", "Extent (default: each whole layer)",
                                                       optional=True))
        self._add_model_parameters()
        self.addParameter(QgsProcessingParameterFolderDestination("OUTPUT_FOLDER", "Output folder"))
        self.addOutput(QgsProcessingOutputMultipleLayers("MASKS", "Masks"))
        self.addOutput(QgsProcessingOutputMultipleLayers("VECTORS", "Polygons"))

    def _rows(self, parameters, context) -> list[tuple[object, str]]:
        cells = self.parameterAsMatrix(parameters, "ROWS", context)
        if not cells or len(cells) % 2:
            raise QgsProcessingException("give the table as rows of two cells: a layer and a sentence")
        rows = []
        for i in range(0, len(cells), 2):
            layer = QgsProcessingUtils.mapLayerFromString(str(cells[i]), context, True,
                                                          QgsProcessingUtils.LayerHint.Raster)
            if layer is None or layer.type() != layer.RasterLayer:
                raise QgsProcessingException(f"row {i // 2 + 1}: {cells[i]!r} is not a raster layer or file")
            rows.append((layer, str(cells[i + 1])))
        return rows

    def _images(self, rows, parameters, context, tmp: str) -> dict[str, str]:
        """The file the program reads for each layer id: its own GeoTIFF, or an export of the extent."""
        images = {}
        for layer, _ in rows:
            if layer.id() in images:
                continue
            extent = self._extent(parameters, context, layer)
            image = plain_path(layer) if extent is None else None
            if image is None:
                image = export_geotiff(layer, extent, os.path.join(tmp, f"layer{len(images)}.tif"), context)
            images[layer.id()] = image
        return images

    def processAlgorithm(self, parameters, context, feedback):
        rows = self._rows(parameters, context)
        folder = self.parameterAsString(parameters, "OUTPUT_FOLDER", context)
        os.makedirs(folder, exist_ok=True)
        masks, vectors = [], []
        with tempfile.TemporaryDirectory(prefix="rs2sam2-qgis-") as tmp:
            images = self._images(rows, parameters, context, tmp)
            jobs = os.path.join(tmp, "jobs.csv")
            with open(jobs, "w", newline="", encoding="utf-8") as f:
                out = csv.writer(f)
                out.writerow(["image", "text", "out", "vector"])
                for i, (layer, sentence) in enumerate(rows, 1):
                    stem = os.path.join(folder, f"{i:02d}_{_slug(sentence)}")
                    masks.append(stem + ".tif")
                    vectors.append(stem + ".gpkg")
                    out.writerow([images[layer.id()], sentence, masks[-1], vectors[-1]])
            self._predict(["--batch", jobs, *self._model_arguments(parameters, context)], feedback)
        for (layer, _), vector in zip(rows, vectors):
            if images[layer.id()].startswith(tmp):
                name_layer_source(vector, layer)
        for (_, sentence), mask, vector in zip(rows, masks, vectors):  # into the project, named by sentence
            for path in (mask, vector):
                context.addLayerToLoadOnCompletion(path, QgsProcessingContext.LayerDetails(
                    sentence, context.project(), sentence))
        return {"OUTPUT_FOLDER": folder, "MASKS": masks, "VECTORS": vectors}
