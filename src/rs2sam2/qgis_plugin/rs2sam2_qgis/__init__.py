"""rs2sam2 for QGIS: a Processing provider that runs the user's ``rs2sam2`` program.

This folder is a QGIS plugin, shipped inside the rs2sam2 package as data and installed with
``rs2sam2 qgis install`` or ``rs2sam2 qgis package``; the rs2sam2 package never imports it.
"""

from .plugin import Rs2sam2Plugin


def classFactory(iface):
    """The plugin object QGIS asks for when it loads the plugin."""
    return Rs2sam2Plugin(iface)
