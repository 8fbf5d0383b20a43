"""The screenshot of the docs' "In QGIS" page: QGIS desktop, the Segment by sentence dialog after a
run, and its result layers on the map.

Run by QGIS itself, under Xvfb, with the plugin installed (``rs2sam2 qgis install``)::

    QGIS_CUSTOM_CONFIG_PATH=CFG RS2SAM2_SHOT=shot.json xvfb-run -a -s "-screen 0 1280x800x24" \\
        qgis --nologo --noversioncheck --code tests/qgis_screenshot.py

``shot.json`` names ``image``, ``sentence``, ``checkpoint``, ``program`` (the rs2sam2 program),
``work`` (a folder for the outputs) and ``png`` (the screenshot to write).
"""

import json
import os

import processing
from processing.core.ProcessingConfig import ProcessingConfig
from qgis.core import QgsFillSymbol, QgsProject, QgsRasterLayer, QgsRectangle
from qgis.PyQt.QtCore import QPoint, QRect, QTimer
from qgis.PyQt.QtWidgets import QApplication, QDockWidget, QSplitter, QTabWidget
from qgis.utils import iface

cfg = json.load(open(os.environ["RS2SAM2_SHOT"]))
ProcessingConfig.setSettingValue("RS2SAM2_PROGRAM", cfg["program"])
window = iface.mainWindow()
window.setGeometry(QRect(0, 0, 1280, 800))
for dock in window.findChildren(QDockWidget):  # the Layers panel only: room for the map
    if dock.objectName() != "Layers":
        dock.hide()
scene = QgsRasterLayer(cfg["image"], "scene")
QgsProject.instance().addMapLayer(scene)
iface.mapCanvas().setExtent(scene.extent())
params = {"INPUT": scene.id(), "SENTENCE": cfg["sentence"], "CHECKPOINT": cfg["checkpoint"], "MODE": 0,
          "DEVICE": "cpu", "OUTPUT": os.path.join(cfg["work"], "mask.tif"),
          "VECTOR": os.path.join(cfg["work"], "polygons.gpkg")}
dialog = processing.createAlgorithmDialog("rs2sam2:segment_by_sentence", params)
dialog.setGeometry(QRect(790, 70, 480, 700))
dialog.show()
dialog.runAlgorithm()


def polygons_layer():
    return next((lyr for lyr in QgsProject.instance().mapLayers().values() if lyr.type() == lyr.VectorLayer), None)


def style_and_shoot():
    layer = polygons_layer()
    if layer is None:  # the run has not finished yet
        QTimer.singleShot(1000, style_and_shoot)
        return
    layer.setRenderer(layer.renderer().clone())
    layer.renderer().setSymbol(QgsFillSymbol.createSimple(
        {"color": "255,40,40,90", "outline_color": "255,0,0", "outline_width": "0.6"}))
    for other in QgsProject.instance().mapLayers().values():  # the mask raster stays in the list, unticked
        if other.type() == other.RasterLayer and other.id() != scene.id():
            QgsProject.instance().layerTreeRoot().findLayer(other.id()).setItemVisibilityChecked(False)
    dialog.findChild(QTabWidget).setCurrentIndex(0)  # the parameters, as the user filled them in
    for splitter in dialog.findChildren(QSplitter):  # fold the help text away
        splitter.setSizes([1, 0])
    dialog.resize(480, 700)
    dialog.move(window.width() - dialog.frameGeometry().width() - 6, 70)
    frame_scene()
    iface.mapCanvas().refreshAllLayers()
    QTimer.singleShot(3000, shoot)


def frame_scene():
    """The whole scene in the part of the map the dialog leaves free, on its left."""
    canvas = iface.mapCanvas()
    left = canvas.mapToGlobal(QPoint(0, 0)).x()
    free = max(100, dialog.x() - left)
    box = scene.extent()
    per_px = max(box.width() / (free - 20), box.height() / (canvas.height() - 20))
    x0, cy, half = box.xMinimum() - 10 * per_px, box.center().y(), canvas.height() * per_px / 2
    canvas.setExtent(QgsRectangle(x0, cy - half, x0 + canvas.width() * per_px, cy + half))


def shoot():
    QApplication.primaryScreen().grabWindow(0).save(cfg["png"])
    os._exit(0)


QTimer.singleShot(2000, style_and_shoot)
