"""NoduleMalignancy: click a lung nodule, get its segmentation, evidence maps and malignancy.

Thin Slicer module: UI wiring, progress, cancel, dependency installation on first use and the
self-test entry. Everything else lives in ``NoduleMalignancyLib`` (GUI-free, tested headless):
the logic is :class:`NoduleMalignancyLib.mrml.logic.NoduleMalignancyLogic`, re-exported here.

Threads: torch runs on one persistent worker thread (a single-worker executor made once per
widget: per-thread CUDA/cuDNN state stays warm); MRML is only touched on the main thread
(``logic.prepare`` before submitting, ``logic.apply`` when a QTimer sees the result).
"""

import concurrent.futures
import logging
import os
import sys
import threading
import unittest

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

# The library sits beside the module folder, in the source tree and in the build/install
# tree alike (see CMakeLists.txt); make it importable without installing it.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isdir(os.path.join(_ROOT, "NoduleMalignancyLib")) and _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from NoduleMalignancyLib.mrml import dependencies  # noqa: E402 (no torch needed to import)
from NoduleMalignancyLib.mrml.selftest import (  # noqa: E402
    SAMPLE,
    SAMPLE_ARCHIVE_SHA256,
    NoduleMalignancySelfTestMixin,
)

DEBOUNCE_MS = 500
POLL_MS = 50


def __getattr__(name):
    """``NoduleMalignancyLogic`` is the library's class, imported on first use.

    Why lazily: importing it imports torch, which may not be installed yet when Slicer loads
    the module; the widget installs it on first use.
    """
    if name == "NoduleMalignancyLogic":
        from NoduleMalignancyLib.mrml.logic import NoduleMalignancyLogic

        return NoduleMalignancyLogic
    raise AttributeError(name)


def __dir__():
    """List the lazily imported logic class too, so lookups of the four classes by name see it."""
    return sorted([*globals(), "NoduleMalignancyLogic"])


#
# Module
#
class NoduleMalignancy(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Nodule Malignancy"
        self.parent.categories = ["Chest Imaging"]
        self.parent.dependencies = []
        self.parent.contributors = ["NoduleMalignancy developers"]
        self.parent.helpText = (
            "Place a point on a lung nodule: a K-fold ensemble of a multi-scale multiple-instance-"
            "learning network returns the nodule segmentation, evidence maps (where the "
            "malignancy evidence lies, per scale), the LIDC attributes and a malignancy "
            "probability with its spread across folds. Research use only; not a medical device."
        )
        self.parent.acknowledgementText = (
            "Sample data: LIDC-IDRI (The Cancer Imaging Archive, CC BY 3.0), Armato SG III et al., "
            "Med Phys 38(2):915-931, 2011."
        )
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """Register LIDC-IDRI-0001 with SampleData, verified by its SHA256.

    The archive is never downloaded from the internet: the source is a ``file://`` URI into
    the data folder, registered only when ``NODULE_MALIGNANCY_DATA`` is set and holds it.
    """
    try:
        import SampleData
    except ImportError:
        return
    from NoduleMalignancyLib.core import settings
    from NoduleMalignancyLib.files import samples

    folder = settings.data_dir()
    if folder is None:
        return
    archive = folder / samples.CT_SUBFOLDER / samples.SAMPLES[SAMPLE].archive
    if not archive.is_file():
        return
    icon = os.path.join(os.path.dirname(__file__), "Resources", "Icons", "NoduleMalignancy.png")
    SampleData.SampleDataLogic.registerCustomSampleDataSource(
        category="NoduleMalignancy",
        sampleName=SAMPLE,
        uris=archive.resolve().as_uri(),
        fileNames=archive.name,
        thumbnailFileName=icon,
        loadFiles=False,
        checksums=f"SHA256:{SAMPLE_ARCHIVE_SHA256[SAMPLE]}",
    )


#
# Widget
#
class NoduleMalignancyWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._executor = None
        self._future = None
        self._request = None
        self._cancel = None
        self._progress = (0.0, "")
        self._messages = []
        self._pendingPoints = set()
        self._observedMarkups = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/NoduleMalignancy.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.progressBar.setVisible(False)
        self.ui.markupsWidget.markupsPlaceWidget().setPlaceMultipleMarkups(
            slicer.qSlicerMarkupsPlaceWidget.ForcePlaceMultipleMarkups
        )
        self.ui.markupsWidget.setNodeBaseName("Nodules")

        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="NoduleMalignancy"
        )
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(POLL_MS)
        self._pollTimer.connect("timeout()", self._poll)
        self._debounceTimer = qt.QTimer()
        self._debounceTimer.setSingleShot(True)
        self._debounceTimer.setInterval(DEBOUNCE_MS)
        self._debounceTimer.connect("timeout()", self._analyzePending)

        self.ui.analyzeButton.connect("clicked(bool)", self.onAnalyzeButton)
        self.ui.exportButton.connect("clicked(bool)", self.onExport)
        self.ui.evidenceScaleComboBox.connect(
            "currentTextChanged(QString)", lambda text: self._show(scale=text)
        )
        self.ui.opacitySliderWidget.connect(
            "valueChanged(double)", lambda value: self._show(opacity=value)
        )
        self.ui.markupsWidget.connect("markupsNodeChanged()", self._observeMarkups)
        self.ui.autoAnalyzeCheckBox.connect("toggled(bool)", lambda on: self._observeMarkups())
        self.ui.resultsTableView.connect("clicked(QModelIndex)", self.onTableClicked)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneClose)

    def cleanup(self):
        self._cancelRunning()
        self._pollTimer.stop()
        self._debounceTimer.stop()
        self.removeObservers()
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    def onSceneClose(self, caller=None, event=None):
        self._cancelRunning()
        self._pendingPoints.clear()

    # Logic and dependencies ------------------------------------------------------------------
    def _ensureLogic(self):
        """Install missing packages (after asking) and create the logic, once."""
        if self.logic is not None:
            return self.logic
        if dependencies.missing_requirements():
            try:
                dependencies.ensure_dependencies(
                    confirm=lambda text: slicer.util.confirmOkCancelDisplay(
                        text, "NoduleMalignancy"
                    )
                )
            except dependencies.DependencyError as exc:
                slicer.util.errorDisplay(str(exc))
                return None
        from NoduleMalignancyLib.mrml.logic import NoduleMalignancyLogic

        self.logic = NoduleMalignancyLogic()
        return self.logic

    # Analysis --------------------------------------------------------------------------------
    def onAnalyzeButton(self):
        if self._future is not None:
            self._cancelRunning()
        else:
            self.startAnalysis(None)

    def startAnalysis(self, pointIndex):
        """prepare (main thread) -> compute (worker) -> apply (main thread, in _poll)."""
        logic = self._ensureLogic()
        if logic is None or self._future is not None:
            return
        from NoduleMalignancyLib.mrml.logic import InputError

        device = self.ui.deviceComboBox.currentText
        try:
            logic.resolveDevice(device)
            request = logic.prepare(
                self.ui.inputVolumeSelector.currentNode(),
                self.ui.markupsWidget.currentNode(),
                pointIndex,
            )
        except InputError as exc:
            slicer.util.errorDisplay(str(exc))
            return
        self._request = request
        self._cancel = threading.Event()
        self._progress = (0.0, "Starting")
        self._future = self._executor.submit(
            logic.compute, request, device, self._onProgress, self._messages.append, self._cancel
        )
        self.ui.analyzeButton.text = "Cancel"
        self.ui.progressBar.setVisible(True)
        self._pollTimer.start()

    def _onProgress(self, fraction, message):
        self._progress = (fraction, message)  # worker thread: one atomic assignment

    def _cancelRunning(self):
        if self._cancel is not None:
            self._cancel.set()

    def _poll(self):
        fraction, message = self._progress
        self.ui.progressBar.value = int(100 * fraction)
        self.ui.statusLabel.text = message
        while self._messages:
            logging.info(self._messages.pop(0))
        future = self._future
        if future is None or not future.done():
            return
        self._pollTimer.stop()
        request, cancel = self._request, self._cancel
        self._future = self._request = self._cancel = None
        self.ui.analyzeButton.text = "Analyze"
        self.ui.progressBar.setVisible(False)
        from NoduleMalignancyLib.mrml.logic import AnalysisCancelledError, InputError

        try:
            output = self.logic.apply(request, future.result(), cancel)
        except AnalysisCancelledError:
            self.ui.statusLabel.text = "Cancelled; nothing was changed."
        except InputError as exc:
            self.ui.statusLabel.text = str(exc)
            slicer.util.errorDisplay(str(exc))
        except Exception as exc:  # noqa: BLE001 - shown to the user, details in the log
            logging.exception("NoduleMalignancy analysis failed")
            slicer.util.errorDisplay(f"Analysis failed: {exc}")
        else:
            self.ui.resultsTableView.setMRMLTableNode(output.table_node)
            r = output.results[-1]
            self.ui.statusLabel.text = (
                f"{output.points[-1].label}: malignancy {100 * r.malignancy_probability:.0f} % "
                f"(SD {100 * r.malignancy_sd:.0f})"
            )
        if self._pendingPoints:
            self._debounceTimer.start()

    # Analyse on placement / move -------------------------------------------------------------
    def _observeMarkups(self):
        if self._observedMarkups is not None:
            self.removeObserver(
                self._observedMarkups,
                slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent,
                self.onPointChanged,
            )
            self.removeObserver(
                self._observedMarkups,
                slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent,
                self.onPointChanged,
            )
        node = self.ui.markupsWidget.currentNode()
        self._observedMarkups = node if self.ui.autoAnalyzeCheckBox.checked else None
        if self._observedMarkups is not None:
            self.addObserver(
                node, slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self.onPointChanged
            )
            self.addObserver(
                node, slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent, self.onPointChanged
            )

    @vtk.calldata_type(vtk.VTK_INT)
    def onPointChanged(self, caller, event, index=None):
        if index is None or not 0 <= index < caller.GetNumberOfControlPoints():
            display = caller.GetDisplayNode()
            index = display.GetActiveControlPoint() if display is not None else -1
        if 0 <= index < caller.GetNumberOfControlPoints():
            self._pendingPoints.add(caller.GetNthControlPointID(index))
        self._debounceTimer.start()  # restarts: analyse ~500 ms after the last change

    def _analyzePending(self):
        markups = self._observedMarkups
        if self._future is not None or markups is None:
            return  # _poll restarts the timer when the running analysis ends
        indices = [markups.GetControlPointIndexByID(i) for i in self._pendingPoints]
        self._pendingPoints.clear()
        indices = sorted(i for i in indices if i >= 0)
        if indices:
            self.startAnalysis(indices)

    # Results ---------------------------------------------------------------------------------
    def _show(self, scale=None, opacity=None):
        if self.logic is not None:
            self.logic.showEvidence(scale=scale or None, opacity=opacity)

    def onTableClicked(self, index):
        if self.logic is not None:
            self.logic.jumpToNodule(index.row())

    def onExport(self):
        if self.logic is None:
            return
        folder = qt.QFileDialog.getExistingDirectory(None, "Export nodule results to")
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay("Export failed.", waitCursor=True):
            files = self.logic.exportResults(folder)
            self.ui.statusLabel.text = f"Wrote {len(files)} files to {folder}"


#
# Test
#
class NoduleMalignancyTest(ScriptedLoadableModuleTest, NoduleMalignancySelfTestMixin):
    """Reload and Test: the shared self-test bodies (``NoduleMalignancyLib/selftest.py``)."""

    def setUp(self):
        self.setUpTest()

    def runTest(self):
        self.runSelfTests()

    def sampleVolumePath(self):
        """LIDC-IDRI-0001 through SampleData (SHA256-verified) when registered, else the cache."""
        from NoduleMalignancyLib.files import samples

        try:
            import SampleData

            registerSampleData()
            sources = SampleData.SampleDataLogic.sampleDataSourcesByCategory("NoduleMalignancy")
            source = next((s for s in sources if s.sampleName == SAMPLE), None)
        except ImportError:
            source = None
        if source is not None:
            archive = SampleData.SampleDataLogic().downloadFileIntoCache(
                source.uris[0], source.fileNames[0], source.checksums[0]
            )
            return samples.sample_path(SAMPLE, data_dir=os.path.dirname(archive))
        try:
            return samples.sample_path(SAMPLE)
        except samples.SampleNotFoundError as exc:
            raise unittest.SkipTest(f"{SAMPLE} is not available: {exc}") from None
