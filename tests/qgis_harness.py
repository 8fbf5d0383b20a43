"""Runs the QGIS plugin in a standalone QgsApplication, for tests/test_qgis.py.

Started by the test with QGIS's Python (Debian's /usr/bin/python3, which has the ``qgis`` module)
and QT_QPA_PLATFORM=offscreen: ``python3 qgis_harness.py CONFIG.json REPORT.json``. It loads the
plugin from a QGIS profile's plugins folder the way QGIS does (import, ``classFactory``,
``initProcessing``), runs the algorithms through ``processing.run`` (and one through a Graphical
Modeler model), and writes what happened -- results, errors, progress, messages, timings -- to the
report for the test to check. It asserts nothing itself.
"""

import json
import os
import sys
import time
import traceback

from qgis.core import (
    QgsApplication,
    QgsProcessingFeedback,
    QgsProcessingModelAlgorithm,
    QgsProcessingModelChildAlgorithm,
    QgsProcessingModelChildParameterSource,
    QgsProcessingModelOutput,
    QgsProcessingModelParameter,
    QgsProcessingParameterRasterLayer,
    QgsProject,
    QgsRasterLayer,
)

sys.path.append("/usr/share/qgis/python/plugins")  # Processing itself is a plugin


class Recorder(QgsProcessingFeedback):
    """A feedback that keeps what the algorithm reported, and can press Cancel at the first progress."""

    def __init__(self, cancel_on_progress=False):
        super().__init__()
        self.log = {"progress": [], "info": [], "warning": [], "debug": [], "command": []}
        self.cancel_on_progress = cancel_on_progress
        self.canceled_at = None

    def setProgress(self, value):
        self.log["progress"].append(value)
        super().setProgress(value)
        if self.cancel_on_progress and self.canceled_at is None:
            self.canceled_at = time.monotonic()
            self.cancel()

    def pushInfo(self, text):
        self.log["info"].append(text)

    def pushWarning(self, text):
        self.log["warning"].append(text)

    def pushDebugInfo(self, text):
        self.log["debug"].append(text)

    def pushCommandInfo(self, text):
        self.log["command"].append(text)


def pid_of(log):
    for line in log["debug"]:
        if line.startswith("rs2sam2 process "):
            return int(line.split()[-1])
    return None


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def run_case(processing, alg, params, cancel_on_progress=False):
    """Run one algorithm; the outcome, whatever it is, as a dict."""
    feedback = Recorder(cancel_on_progress)
    start = time.monotonic()
    case = {"error": None, "results": None}
    try:
        results = processing.run(alg, params, feedback=feedback)
        case["results"] = {k: v for k, v in results.items() if isinstance(v, (str, list, int, float))}
    except Exception as exc:  # the test looks at the message
        case["error"] = str(exc)
        case["error_type"] = type(exc).__name__
    end = time.monotonic()
    case.update(seconds=end - start, log=feedback.log)
    pid = pid_of(feedback.log)
    case["pid_alive_after"] = None if pid is None else alive(pid)
    if feedback.canceled_at is not None:
        case["cancel_to_end_s"] = end - feedback.canceled_at
    return case


def model_algorithm(model_params):
    """A Graphical Modeler model with one step: Segment by sentence on the model's layer input."""
    model = QgsProcessingModelAlgorithm("segment in a model", "tests")
    model.addModelParameter(QgsProcessingParameterRasterLayer("layer", "layer"), QgsProcessingModelParameter("layer"))
    child = QgsProcessingModelChildAlgorithm("rs2sam2:segment_by_sentence")
    child.setChildId("seg")
    child.addParameterSources("INPUT", [QgsProcessingModelChildParameterSource.fromModelParameter("layer")])
    for name, value in model_params.items():
        child.addParameterSources(name, [QgsProcessingModelChildParameterSource.fromStaticValue(value)])
    outputs = {}
    for name, child_output in (("mask", "OUTPUT"), ("polygons", "VECTOR")):
        out = QgsProcessingModelOutput(name)
        out.setChildId("seg")
        out.setChildOutputName(child_output)
        outputs[name] = out
    child.setModelOutputs(outputs)
    model.addChildAlgorithm(child)
    return model


def main(config_path, report_path):
    cfg = json.load(open(config_path))
    app = QgsApplication([], False)
    app.initQgis()
    report = {"cases": {}}
    try:
        import processing
        from processing.core.Processing import Processing
        from processing.core.ProcessingConfig import ProcessingConfig

        Processing.initialize()
        sys.path.insert(0, cfg["plugins_dir"])  # as QGIS does for a profile's python/plugins
        import rs2sam2_qgis

        plugin = rs2sam2_qgis.classFactory(None)
        plugin.initProcessing()
        registry = QgsApplication.processingRegistry()
        report["plugin_file"] = rs2sam2_qgis.__file__
        report["algorithms"] = sorted(a.id() for a in registry.algorithms() if a.provider().id() == "rs2sam2")
        ProcessingConfig.setSettingValue("RS2SAM2_PROGRAM", cfg["program"])
        for layer_cfg in cfg.get("layers", []):  # project layers that the table of Segment many names
            QgsProject.instance().addMapLayer(QgsRasterLayer(layer_cfg["source"], layer_cfg["name"], "gdal"))
        for name, case in cfg["cases"].items():
            alg = model_algorithm(case["model_params"]) if case.get("model") else case["alg"]
            report["cases"][name] = run_case(processing, alg, case["params"], case.get("cancel_on_progress", False))
        plugin.unload()
        report["algorithms_after_unload"] = sorted(
            a.id() for a in registry.algorithms() if a.provider().id() == "rs2sam2")
    except Exception:
        report["harness_error"] = traceback.format_exc()
    json.dump(report, open(report_path, "w"), indent=1)
    app.exitQgis()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
