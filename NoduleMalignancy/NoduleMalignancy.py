"""NoduleMalignancy: click a lung nodule, get its segmentation, evidence maps and malignancy.

Thin Slicer module: UI wiring, progress, cancel, dependency installation on first use and the
self-test entry. Everything else lives in ``NoduleMalignancyLib`` (GUI-free, tested headless):
the logic is :class:`NoduleMalignancyLib.mrml.logic.NoduleMalignancyLogic`, re-exported here.

The "Reading study" section is :class:`NoduleMalignancyLib.study.scene_reading.SceneReading`
(tested headless in Testing/test_scene_reading.py); its handlers here are one line each.

Threads: :class:`NoduleMalignancyLib.mrml.runner.AnalysisRunner` keeps torch on one persistent
worker thread and MRML on the main thread; a QTimer here only calls its ``poll`` and shows
the result (tested headless in Testing/test_runner.py).

Inputs: the panel shows the module's parameter node (Slicer's scripted-module pattern:
``setParameterNode``, ``updateGUIFromParameterNode``, ``updateParameterNodeFromGUI``, ``enter``
/ ``exit``), so a saved scene restores the CT, the point list, the device, the evidence scale
and opacity, the prior CT and its dates; the parameters are :mod:`NoduleMalignancyLib.mrml.parameters` (tested headless in
Testing/test_parameter_node.py). The analysis reads its inputs from that node, not the controls.

The "Prior CT" section: "Compare with prior" runs ``logic.compareWithPrior`` (the exam with the
prior CT and dates of the parameter node), which writes the comparison into the results table
(:mod:`NoduleMalignancyLib.mrml.prior_table`, tested headless in Testing/test_mrml_exam.py).
"""

import logging
import os
import sys
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

from NoduleMalignancyLib.mrml import dependencies, parameters  # noqa: E402 (neither needs torch)
from NoduleMalignancyLib.mrml.selftest import (  # noqa: E402
    SAMPLE,
    SAMPLE_ARCHIVE_SHA256,
    NoduleMalignancySelfTestMixin,
)

try:
    from slicer.i18n import tr as _
except ImportError:  # Slicer before 5.4 has no translation helpers

    def _(text):
        return text


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
        self.parent.title = _("Nodule Malignancy")
        self.parent.categories = [_("Chest Imaging")]
        self.parent.dependencies = []
        self.parent.contributors = ["NoduleMalignancy developers"]
        self.parent.helpText = _(
            "Place a point on a lung nodule: a K-fold ensemble of a multi-scale multiple-instance-"
            "learning network returns the nodule segmentation, evidence maps (where the "
            "malignancy evidence lies, per scale), the LIDC attributes and a malignancy "
            "probability with its spread across folds. Research use only; not a medical device."
        )
        self.parent.acknowledgementText = _(
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
    """UI wiring only: the concurrency lives in ``NoduleMalignancyLib.mrml.runner``."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.runner = None
        self._parameterNode = None
        self._updatingGUIFromParameterNode = False
        self._observedMarkups = None
        self.studyReading = None  # made on first use: it imports torch
        self._studyInputs = {}
        self._studyFormFor = None

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

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(POLL_MS)
        self._pollTimer.connect("timeout()", self._poll)

        self.ui.analyzeButton.connect("clicked(bool)", self.onAnalyzeButton)
        self.ui.exportButton.connect("clicked(bool)", self.onExport)
        self.ui.exportDicomButton.connect("clicked(bool)", self.onExportDicom)
        self.ui.compareButton.connect("clicked(bool)", self.onCompare)
        for control, signal, handler in (
            (self.ui.inputVolumeSelector, "currentNodeChanged(vtkMRMLNode*)", None),
            (self.ui.markupsWidget, "markupsNodeChanged()", None),
            (self.ui.deviceComboBox, "currentIndexChanged(int)", None),
            (self.ui.autoAnalyzeCheckBox, "toggled(bool)", None),
            (self.ui.priorVolumeSelector, "currentNodeChanged(vtkMRMLNode*)", None),
            (self.ui.priorDateLineEdit, "editingFinished()", None),
            (self.ui.examDateLineEdit, "editingFinished()", None),
            (self.ui.evidenceScaleComboBox, "currentIndexChanged(int)", self.onEvidenceDisplay),
            (self.ui.opacitySliderWidget, "valueChanged(double)", self.onEvidenceDisplay),
        ):
            control.connect(signal, handler or self.updateParameterNodeFromGUI)
        self.ui.resultsTableView.connect("clicked(QModelIndex)", self.onTableClicked)
        self.ui.studySignInButton.connect("clicked(bool)", self.onStudySignIn)
        self.ui.studySubmitButton.connect("clicked(bool)", self.onStudySubmit)
        self.ui.studySkipButton.connect("clicked(bool)", self.onStudySkip)
        self._showStudy()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.initializeParameterNode()

    def cleanup(self):
        self._pollTimer.stop()
        self.removeObservers()
        if self.runner is not None:
            self.runner.shutdown()

    def enter(self):
        """The module is shown: follow this scene's parameter node."""
        self.initializeParameterNode()

    def exit(self):
        """Another module is shown: stop following the parameter node (it stays in the scene)."""
        self.setParameterNode(None)

    def onSceneStartClose(self, caller=None, event=None):
        self.setParameterNode(None)
        if self.runner is not None:
            self.runner.cancel()
            self.runner.clear_pending()

    def onSceneEndClose(self, caller=None, event=None):
        if self.parent.isEntered:
            self.initializeParameterNode()

    # Parameter node (the parameters: NoduleMalignancyLib.mrml.parameters) -------------------
    def initializeParameterNode(self):
        """The scene's parameter node (made with the defaults if missing; a CT loaded before
        the module opened is taken as the input)."""
        node = parameters.parameter_node(slicer.mrmlScene)
        parameters.adopt_first_volume(node, slicer.mrmlScene)
        self.setParameterNode(node)

    def setParameterNode(self, node):
        """Follow ``node`` (or none): the panel shows it and writes every change to it."""
        if self._parameterNode is not None:
            self.removeObserver(
                self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode
            )
        self._parameterNode = node
        if node is not None:
            self.addObserver(node, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
            self.updateGUIFromParameterNode()

    def updateGUIFromParameterNode(self, caller=None, event=None):
        """Show the parameter node's inputs in the controls (their signals write nothing back)."""
        if self._parameterNode is None or self._updatingGUIFromParameterNode:
            return
        inputs = parameters.read_inputs(self._parameterNode)
        self._updatingGUIFromParameterNode = True
        try:
            self.ui.inputVolumeSelector.setCurrentNode(inputs.volume)
            self.ui.markupsWidget.setCurrentNode(inputs.markups)
            self.ui.deviceComboBox.setCurrentIndex(self.ui.deviceComboBox.findText(inputs.device))
            self.ui.evidenceScaleComboBox.setCurrentIndex(
                self.ui.evidenceScaleComboBox.findText(inputs.evidence_scale)
            )
            self.ui.opacitySliderWidget.value = inputs.evidence_opacity
            self.ui.autoAnalyzeCheckBox.checked = inputs.auto_analyze
            self.ui.priorVolumeSelector.setCurrentNode(inputs.prior_volume)
            self.ui.priorDateLineEdit.text = inputs.prior_date
            self.ui.examDateLineEdit.text = inputs.exam_date
        finally:
            self._updatingGUIFromParameterNode = False
        self._observeMarkups(inputs)

    def updateParameterNodeFromGUI(self, caller=None, event=None):
        """Write the controls to the parameter node (one Modified event); a date it cannot
        read is said in the status line and nothing is written."""
        if self._parameterNode is None or self._updatingGUIFromParameterNode:
            return False
        from NoduleMalignancyLib.core.errors import InputError  # no torch

        try:
            parameters.write_inputs(
                self._parameterNode,
                parameters.PanelInputs(
                    volume=self.ui.inputVolumeSelector.currentNode(),
                    markups=self.ui.markupsWidget.currentNode(),
                    device=self.ui.deviceComboBox.currentText,
                    evidence_scale=self.ui.evidenceScaleComboBox.currentText,
                    evidence_opacity=self.ui.opacitySliderWidget.value,
                    auto_analyze=self.ui.autoAnalyzeCheckBox.checked,
                    prior_volume=self.ui.priorVolumeSelector.currentNode(),
                    prior_date=self.ui.priorDateLineEdit.text,
                    exam_date=self.ui.examDateLineEdit.text,
                ),
            )
        except InputError as exc:
            self.ui.statusLabel.text = str(exc)
            return False
        return True

    # Logic and dependencies ------------------------------------------------------------------
    def _ensureLogic(self):
        """Install missing packages (after asking) and create the logic and runner, once."""
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
        from NoduleMalignancyLib.mrml.runner import AnalysisRunner

        self.logic = NoduleMalignancyLogic()
        self.runner = AnalysisRunner(self.logic, self._currentInputs)
        return self.logic

    def _currentInputs(self):
        """(volume, markups, device) as the parameter node holds them."""
        inputs = parameters.read_inputs(parameters.parameter_node(slicer.mrmlScene))
        return inputs.volume, self._observedMarkups or inputs.markups, inputs.device

    # Analysis --------------------------------------------------------------------------------
    def onAnalyzeButton(self):
        if self.runner is not None and self.runner.running:
            self.runner.cancel()
        else:
            self.startAnalysis(None)

    def startAnalysis(self, pointIndex):
        """prepare (main thread) -> compute (worker) -> apply (main thread, in _poll)."""
        if not self._modelAllowed() or self._ensureLogic() is None:
            return
        from NoduleMalignancyLib.mrml.logic import InputError

        volume, markups, device = self._currentInputs()
        try:
            started = self.runner.start(volume, markups, pointIndex, device)
        except InputError as exc:
            slicer.util.errorDisplay(str(exc))
            return
        if started:
            self._setBusy(True)
            self._pollTimer.start()

    def _setBusy(self, busy):
        self.ui.analyzeButton.text = _("Cancel") if busy else _("Analyze")
        self.ui.progressBar.setVisible(busy)

    def _poll(self):
        from NoduleMalignancyLib.mrml.logic import InputError

        update = self.runner.poll()
        self.ui.progressBar.value = int(100 * update.fraction)
        if update.message:
            self.ui.statusLabel.text = update.message
        for message in update.log:
            logging.info(message)
        if update.output is not None:
            self.ui.resultsTableView.setMRMLTableNode(update.output.table_node)
            from NoduleMalignancyLib.core.scope.assessment import answer_lines  # the tier first

            label = update.output.points[-1].label
            self.ui.statusLabel.text = "\n".join(answer_lines(update.output.results[-1], label))
        elif update.cancelled:
            self.ui.statusLabel.text = _("Cancelled; nothing was changed.")
        elif isinstance(update.error, InputError):
            self.ui.statusLabel.text = str(update.error)
            slicer.util.errorDisplay(str(update.error))
        elif update.error is not None:
            logging.error("NoduleMalignancy analysis failed", exc_info=update.error)
            slicer.util.errorDisplay(_("Analysis failed: {error}").format(error=update.error))
        self._setBusy(update.running)
        if self.runner.idle:
            self._pollTimer.stop()

    # Analyze on placement / move -------------------------------------------------------------
    def _observeMarkups(self, inputs):
        """Observe the input point list while analysis on placement is on (``inputs``: the
        parameter node's)."""
        node = inputs.markups if inputs.auto_analyze else None
        if node is self._observedMarkups:
            return
        events = (
            slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent,
            slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent,
        )
        if self._observedMarkups is not None:
            for event in events:
                self.removeObserver(self._observedMarkups, event, self.onPointChanged)
        self._observedMarkups = node
        if node is not None:
            for event in events:
                self.addObserver(node, event, self.onPointChanged)

    @vtk.calldata_type(vtk.VTK_INT)
    def onPointChanged(self, caller, event, index=None):
        if not self._modelAllowed() or self._ensureLogic() is None:
            return
        if index is None or not 0 <= index < caller.GetNumberOfControlPoints():
            display = caller.GetDisplayNode()
            index = display.GetActiveControlPoint() if display is not None else -1
        if 0 <= index < caller.GetNumberOfControlPoints():
            self.runner.point_changed(caller.GetNthControlPointID(index))
            self._pollTimer.start()  # the runner starts it after the debounce

    # Reading study (the behaviour: NoduleMalignancyLib.study.scene_reading) -------------------
    def onStudySignIn(self):
        self._study(
            lambda reading: reading.sign_in(
                self.ui.studyFilePathLineEdit.currentPath,
                self.ui.studyDatabasePathLineEdit.currentPath,
                self.ui.studyTokenLineEdit.text,
            )
        )

    def onStudySubmit(self):
        # The step the form was built for goes with it (a stale one is refused); the button is
        # off until the clicks queued meanwhile (a double click's second) have been dropped.
        step = self._studyFormFor
        self.ui.studySubmitButton.enabled = False
        self._study(lambda reading: reading.submit(self._studyFormEntries(), step), drain=True)

    def onStudySkip(self):
        step = self._studyFormFor  # as for a submit: a repeated skip names a closed step
        self.ui.studySkipButton.enabled = False
        self._study(lambda reading: reading.skip(step), drain=True)

    def _modelAllowed(self):
        return self.studyReading is None or self.studyReading.model_visible

    def _study(self, action, drain=False):
        """One step of the reader's session (its error shown), then the panel shows the state;
        ``drain``: first deliver the input queued meanwhile (to the disabled button)."""
        if self._ensureLogic() is None:
            return
        if self.studyReading is None:
            from NoduleMalignancyLib.study.scene_reading import SceneReading

            self.studyReading = SceneReading()
        with slicer.util.tryWithErrorDisplay(_("Reading study"), waitCursor=True):
            action(self.studyReading)
        if drain:
            slicer.app.processEvents()
        self._showStudy()

    def _showStudy(self):
        reading = self.studyReading
        self.ui.studyProgressLabel.text = (
            reading.progress_text() if reading else _("Not signed in.")
        )
        self.ui.studyMessageLabel.text = reading.message if reading else ""
        self.ui.studySubmitButton.enabled = bool(reading and reading.can_submit)
        self.ui.studySkipButton.enabled = bool(reading and reading.can_skip)
        self.ui.analyzeButton.enabled = self._modelAllowed()
        if reading and reading.volume is not None:
            self.ui.inputVolumeSelector.setCurrentNode(reading.volume)
            self.ui.markupsWidget.setCurrentNode(reading.markups)
        self._buildStudyForm()

    def _buildStudyForm(self):
        """A drop-down or text box per field, rebuilt only when a new step opens (a refused
        submit keeps what the reader entered)."""
        reading = self.studyReading
        step = reading.step if reading else None
        if step == self._studyFormFor:
            return
        self._studyFormFor, self._studyInputs = step, {}
        layout = self.ui.studyRatingWidget.layout()
        while layout.rowCount():
            layout.removeRow(0)
        fields = reading.fields if step is not None and reading.can_submit else []
        start = reading.start_entries() if fields else {}
        for field in fields:
            if field["choices"]:
                box = qt.QComboBox()
                box.addItems(reading.choice_titles(field))
                box.currentIndex = start[field["name"]]
            else:
                box = qt.QLineEdit(start[field["name"]])
            layout.addRow(field["label"] + (" *" if field["required"] else ""), box)
            self._studyInputs[field["name"]] = box

    def _studyFormEntries(self):
        return {
            name: box.currentIndex if isinstance(box, qt.QComboBox) else box.text
            for name, box in self._studyInputs.items()
        }

    # Results ---------------------------------------------------------------------------------
    def onEvidenceDisplay(self, value=None):
        """The evidence scale or opacity changed: store it, then show it (the logic reads both
        from the parameter node)."""
        if self._updatingGUIFromParameterNode:
            return
        self.updateParameterNodeFromGUI()
        if self.logic is not None:
            self.logic.showEvidence()

    def onCompare(self):
        """The exam with the prior CT (main thread: registration and one analysis per nodule,
        seconds); the comparison lands in the results table, its summary in the status line."""
        if not self._modelAllowed() or self._ensureLogic() is None:
            return
        if not self.updateParameterNodeFromGUI():
            return  # a date it cannot read: the status line says which
        from NoduleMalignancyLib.mrml.prior_table import comparison_summary

        with slicer.util.tryWithErrorDisplay(
            _("Comparison with the prior failed."), waitCursor=True
        ):
            self.ui.statusLabel.text = comparison_summary(self.logic.compareWithPrior())

    def onTableClicked(self, index):
        if self.logic is not None:
            self.logic.jumpToNodule(index.row())

    def onExport(self):
        if self.logic is None:
            return
        folder = qt.QFileDialog.getExistingDirectory(None, _("Export nodule results to"))
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay(_("Export failed."), waitCursor=True):
            files = self.logic.exportResults(folder)
            self.ui.statusLabel.text = _("Wrote {n} files to {folder}").format(
                n=len(files), folder=folder
            )

    def onExportDicom(self):
        """DICOM SEG + SR: the volume's DICOM instances when it came from the DICOM database,
        else a series folder the user picks (a volume loaded from a file has no DICOM source)."""
        if self.logic is None:
            return
        series = self._dicomFilesOfVolume() or qt.QFileDialog.getExistingDirectory(
            None, _("DICOM series the CT was loaded from")
        )
        folder = series and qt.QFileDialog.getExistingDirectory(
            None, _("Write DICOM SEG and SR to")
        )
        if not folder:
            return
        with slicer.util.tryWithErrorDisplay(_("DICOM export failed."), waitCursor=True):
            files = self.logic.exportDicom(folder, series)
            self.ui.statusLabel.text = _("Wrote {seg} and {sr}").format(
                seg=files["seg"].name, sr=files["sr"].name
            )

    def _dicomFilesOfVolume(self):
        volume = self.ui.inputVolumeSelector.currentNode()
        uids = volume.GetAttribute("DICOM.instanceUIDs") if volume is not None else None
        database = getattr(slicer, "dicomDatabase", None)
        if not uids or database is None:
            return None
        return [f for f in (database.fileForInstance(uid) for uid in uids.split()) if f] or None


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
