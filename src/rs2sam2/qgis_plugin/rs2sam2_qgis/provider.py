"""The rs2sam2 Processing provider: its algorithms and its one setting, the path of the program."""

from __future__ import annotations

import os

from processing.core.ProcessingConfig import ProcessingConfig, Setting
from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .algorithms import PROGRAM_SETTING, SegmentBySentence, SegmentMany

ICON = os.path.join(os.path.dirname(__file__), "icon.svg")


class Rs2sam2Provider(QgsProcessingProvider):
    """Segment raster layers by a sentence with the user's ``rs2sam2`` program."""

    def load(self):
        ProcessingConfig.settingIcons[self.name()] = self.icon()
        ProcessingConfig.addSetting(Setting(self.name(), PROGRAM_SETTING,
                                            "Path of the rs2sam2 program (empty: the one on PATH)", "",
                                            valuetype=Setting.FILE))
        ProcessingConfig.readSettings()
        self.refreshAlgorithms()
        return True

    def unload(self):
        ProcessingConfig.removeSetting(PROGRAM_SETTING)

    def loadAlgorithms(self):
        self.addAlgorithm(SegmentBySentence())
        self.addAlgorithm(SegmentMany())

    def id(self):
        return "rs2sam2"

    def name(self):
        return "rs2sam2"

    def longName(self):
        return "rs2sam2: segment what a sentence describes (RS2-SAM2)"

    def icon(self):
        return QIcon(ICON)

    def supportedOutputRasterLayerExtensions(self):
        return ["tif"]

    def supportedOutputVectorLayerExtensions(self):
        return ["gpkg", "shp", "geojson"]

    def defaultVectorFileExtension(self, hasGeometry=True):
        return "gpkg"

    def defaultRasterFileExtension(self):
        return "tif"
