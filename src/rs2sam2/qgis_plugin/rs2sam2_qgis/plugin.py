"""The QGIS plugin object: it adds the rs2sam2 Processing provider and removes it on unload."""

from __future__ import annotations

from qgis.core import QgsApplication

from .provider import Rs2sam2Provider


class Rs2sam2Plugin:
    """A Processing-only plugin: no toolbar or menu of its own; its algorithms are in the Toolbox."""

    def __init__(self, iface=None):
        self.iface = iface
        self.provider = None

    def initProcessing(self):
        self.provider = Rs2sam2Provider()
        QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):
        self.initProcessing()

    def unload(self):
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
