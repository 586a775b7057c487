"""Headless Slicer runtime on the ``slicer-core`` wheel (no Qt, no application).

``import slicer`` outside the Slicer application gives the MRML classes, the module logics and
``slicer.util``, but no ``slicer.mrmlScene``, ``slicer.app`` or ``slicer.modules``.
:func:`ensure_slicer_runtime` builds what the MRML layer of this project needs so the same logic
code runs in Slicer, in batch jobs, in tests and behind the browser reading station:

* an MRML scene and the application logic;
* the module logics the project uses, registered under Slicer's module names (the Volumes logic
  looks up "Colors"; markups JSON storage nodes look up "Markups");
* remote-IO / data-IO wired with a cache folder (``vtkMRMLScene.ReadFromMRB`` unpacks there);
* ``slicer.mrmlScene``, a minimal Qt-free ``slicer.app`` whose ``coreIOManager()`` implements the
  calls ``slicer.util`` makes (``loadVolume``, ``loadSegmentation``, ``loadMarkups``,
  ``loadScene``, ``saveNode``, ``saveScene``, ``exportNode``), and
  ``slicer.modules.<name>.logic()``.

Inside the real Slicer application it does nothing. It never imports ``qt`` or ``ctk``.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import logging
import shutil
import sys
import tempfile
import threading
import types
from pathlib import Path
from typing import Any

from ..core.extras import require_extra

__all__ = [
    "HeadlessApplication",
    "HeadlessIOManager",
    "ensure_slicer_runtime",
    "inside_slicer",
    "is_headless_runtime",
    "reset_scene",
]

logger = logging.getLogger(__name__)

# Module logics registered by the headless runtime, in registration order:
# (name in the application logic, attribute of slicer.modules, class name in slicer).
# Colors first (the Volumes logic asks the application logic for "Colors"); Markups before any
# markups storage node is made (JSON storage nodes find their reader through it).
_MODULE_LOGICS: tuple[tuple[str, str, str], ...] = (
    ("Colors", "colors", "vtkSlicerColorLogic"),
    ("Units", "units", "vtkSlicerUnitsLogic"),
    ("Terminologies", "terminologies", "vtkSlicerTerminologiesModuleLogic"),
    ("SubjectHierarchy", "subjecthierarchy", "vtkSlicerSubjectHierarchyModuleLogic"),
    ("Data", "data", "vtkSlicerDataModuleLogic"),
    ("Volumes", "volumes", "vtkSlicerVolumesLogic"),
    ("Models", "models", "vtkSlicerModelsLogic"),
    ("Markups", "markups", "vtkSlicerMarkupsLogic"),
    ("Segmentations", "segmentations", "vtkSlicerSegmentationsModuleLogic"),
    ("Tables", "tables", "vtkSlicerTablesLogic"),
    ("Transforms", "transforms", "vtkSlicerTransformLogic"),
    ("Sequences", "sequences", "vtkSlicerSequencesLogic"),
)

# File-based colour tables Slicer's logics refer to by ID but the wheel does not ship
# (ID suffix after "vtkMRMLColorTableNode" = singleton tag, node name). Headless they are
# stand-ins built like the procedural "Labels" table, not saved with scenes.
_FILE_COLOR_TABLE_STANDINS: tuple[tuple[str, str], ...] = (
    ("FileGenericColors.txt", "GenericColors"),  # default labelmap colours (Volumes logic)
    ("FileGenericAnatomyColors.txt", "GenericAnatomyColors"),  # default editor colours
)

_RUNTIME: _HeadlessRuntime | None = None
_LOCK = threading.Lock()


def ensure_slicer_runtime(
    cache_dir: str | Path | None = None,
    *,
    scene: Any = None,
    app_logic: Any = None,
) -> types.ModuleType:
    """Return the ``slicer`` module with a usable scene, ``slicer.app`` and ``slicer.modules``.

    Why: the library's MRML logic is written against ``slicer.mrmlScene`` / ``slicer.util`` /
    ``slicer.modules.<name>.logic()`` as inside Slicer; this makes those exist on the wheel.

    Idempotent: later calls return the same runtime (``cache_dir`` of later calls is ignored).
    Inside the Slicer application it returns ``slicer`` untouched.

    :param cache_dir: folder for remote-IO / data-IO caches and unpacked ``.mrb`` bundles.
        Default: a private temporary folder removed at interpreter exit.
    :param scene: adopt an existing scene (e.g. a trame-slicer ``SlicerApp.scene``) instead of
        creating one; ``app_logic`` must then be its application logic. Logics that are already
        registered in that application logic are reused.
    """
    require_extra("slicer", "slicer", "vtk")
    import slicer

    global _RUNTIME
    if inside_slicer(slicer):
        return slicer
    with _LOCK:
        if _RUNTIME is None:
            _RUNTIME = _HeadlessRuntime(slicer, cache_dir, scene=scene, app_logic=app_logic)
        _RUNTIME.install()
    return slicer


def is_headless_runtime() -> bool:
    """True when ``slicer.app`` is this module's headless stand-in (not the real application)."""
    require_extra("slicer", "slicer", "vtk")
    import slicer

    return isinstance(getattr(slicer, "app", None), HeadlessApplication)


def reset_scene() -> Any:
    """Clear the scene as a Slicer test's ``setUp`` does, keeping singletons and colour tables.

    Why: tests share one process-wide scene; each starts from an empty one. Returns the scene.
    """
    slicer = ensure_slicer_runtime()
    scene = slicer.mrmlScene
    scene.Clear(False)
    if _RUNTIME is not None and not inside_slicer(slicer):
        _RUNTIME.restore_defaults()
    return scene


def inside_slicer(slicer: types.ModuleType | None = None) -> bool:
    """True inside the Slicer application (its ``slicer.app`` is a real Qt application).

    The one test of "are we in Slicer" (the dependency installer and the runtime both ask it).
    ``slicer`` defaults to the imported module; never imported, it is not Slicer.
    """
    slicer = slicer if slicer is not None else sys.modules.get("slicer")
    if slicer is None:
        return False
    app = getattr(slicer, "app", None)
    if isinstance(app, HeadlessApplication):
        return False
    if hasattr(slicer, "ScriptedLoadableModule"):
        return True
    return app is not None and hasattr(app, "commandOptions")


class _HeadlessModule:
    """What ``slicer.modules.<name>`` offers without Qt: ``name``, ``title`` and ``logic()``."""

    def __init__(self, name: str, logic: Any):
        self.name = name
        self.title = name
        self._logic = logic

    def logic(self) -> Any:
        return self._logic

    def __repr__(self) -> str:
        return f"<headless Slicer module {self.name}>"


class _HeadlessRuntime:
    """Owns the scene, application logic, module logics and IO objects of the process."""

    def __init__(self, slicer, cache_dir, *, scene=None, app_logic=None):
        if (scene is None) != (app_logic is None):
            raise ValueError("scene and app_logic must be given together")
        self.slicer = slicer
        if cache_dir is None:
            self.cache_dir = Path(tempfile.mkdtemp(prefix="NoduleMalignancy-slicer-"))
            atexit.register(shutil.rmtree, self.cache_dir, True)
        else:
            self.cache_dir = Path(cache_dir).expanduser().resolve()
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.temporary_path = self.cache_dir / "tmp"
        self.temporary_path.mkdir(parents=True, exist_ok=True)
        (self.cache_dir / "remote").mkdir(parents=True, exist_ok=True)

        if scene is None:
            from vtkmodules.vtkCommonCore import vtkCollection

            scene = slicer.vtkMRMLScene()
            crosshair = slicer.vtkMRMLCrosshairNode()
            crosshair.SetCrosshairName("default")
            scene.AddNode(crosshair)
            app_logic = slicer.vtkSlicerApplicationLogic()
            app_logic.SetMRMLScene(scene)
            # Without views: empty slice/view logic collections (PropagateVolumeSelection and
            # FitSliceToAll iterate them).
            app_logic.SetSliceLogics(vtkCollection())
            app_logic.SetViewLogics(vtkCollection())
        self.scene = scene
        self.app_logic = app_logic
        app_logic.SetTemporaryPath(str(self.temporary_path))
        if not app_logic.GetHomeDirectory():
            # The Colors logic looks for <home>/<share>/ColorFiles and logs an error when the
            # home or share folder is unset; the wheel ships no colour files, so point it at an
            # empty folder of ours.
            (self.cache_dir / "share" / "ColorFiles").mkdir(parents=True, exist_ok=True)
            app_logic.SetHomeDirectory(str(self.cache_dir))
            app_logic.SetShareDirectory("share")

        self.logics: dict[str, Any] = {}
        self.modules = types.SimpleNamespace()
        for logic_name, module_name, class_name in _MODULE_LOGICS:
            logic = self._register_logic(logic_name, class_name)
            if logic is not None:
                self.logics[logic_name] = logic
                setattr(self.modules, module_name, _HeadlessModule(logic_name, logic))

        self._wire_data_io()
        self.restore_defaults()
        self.io_manager = HeadlessIOManager(self)
        self.app = HeadlessApplication(self)

    def _register_logic(self, logic_name: str, class_name: str):
        existing = self.app_logic.GetModuleLogic(logic_name)
        if existing is not None:
            return existing
        cls = getattr(self.slicer, class_name, None)
        if cls is None:
            logger.debug("slicer-core has no %s; module %s not available", class_name, logic_name)
            return None
        logic = cls()
        share = _share_directory(logic_name)
        if share is not None and hasattr(logic, "SetModuleShareDirectory"):
            logic.SetModuleShareDirectory(str(share))
        if logic_name == "Colors":
            # The application logic owns a colour logic of its own; Slicer replaces it with the
            # Colors module's, so everything (Volumes included) sees the same default tables.
            self.app_logic.SetColorLogic(logic)
        logic.SetMRMLApplicationLogic(self.app_logic)
        logic.SetMRMLScene(self.scene)
        self.app_logic.SetModuleLogic(logic_name, logic)
        if logic_name == "Segmentations" and "Terminologies" in self.logics:
            # Not wired automatically outside Slicer; harmless when the method is absent.
            setter = getattr(logic, "SetTerminologiesLogic", None)
            if setter is not None:
                setter(self.logics["Terminologies"])
        return logic

    def _wire_data_io(self) -> None:
        """Remote-IO / data-IO with a cache folder: the scene's MRB reader unpacks into it."""
        if self.scene.GetDataIOManager() is not None and self.scene.GetCacheManager() is not None:
            cache = self.scene.GetCacheManager()
            if not cache.GetRemoteCacheDirectory():
                cache.SetRemoteCacheDirectory(str(self.cache_dir / "remote"))
            self.remote_io = None
            self.data_io_logic = None
            return
        slicer = self.slicer
        self.remote_io = slicer.vtkMRMLRemoteIOLogic()
        self.remote_io.SetMRMLScene(self.scene)
        self.remote_io.SetMRMLApplicationLogic(self.app_logic)
        self.remote_io.GetCacheManager().SetRemoteCacheDirectory(str(self.cache_dir / "remote"))
        self.data_io_logic = slicer.vtkDataIOManagerLogic()
        self.data_io_logic.SetMRMLScene(self.scene)
        self.data_io_logic.SetMRMLApplicationLogic(self.app_logic)
        self.data_io_logic.SetAndObserveDataIOManager(self.remote_io.GetDataIOManager())
        self.remote_io.AddDataIOToScene()

    def restore_defaults(self) -> None:
        """Default colour tables, plus stand-ins for the file-based ones the wheel lacks.

        Why: ``CreateAndAddLabelVolume`` (used by ``slicer.util``'s segment <-> array helpers)
        and labelmap loading assign ``vtkMRMLColorTableNodeFileGenericColors.txt``; without it
        every labelmap logs "color table node ... can't be found".
        """
        colors = self.logics.get("Colors")
        scene = self.scene
        if colors is None:
            return
        if scene.GetNodeByID("vtkMRMLColorTableNodeLabels") is None:
            colors.AddDefaultColorNodes()
        for tag, name in _FILE_COLOR_TABLE_STANDINS:
            if scene.GetNodeByID("vtkMRMLColorTableNode" + tag) is not None:
                continue
            node = self.slicer.vtkMRMLColorTableNode()
            node.SetTypeToLabels()
            node.SetName(name)
            node.SetSingletonTag(tag)  # -> ID "vtkMRMLColorTableNode" + tag, as Slicer's
            node.SetSaveWithScene(False)
            node.SetAttribute("Category", "Discrete")
            node.SetAttribute("NoduleMalignancy.HeadlessStandIn", "1")
            scene.AddNode(node)

    def install(self) -> None:
        """Publish the runtime as ``slicer.mrmlScene``, ``slicer.app``, ``slicer.modules``."""
        slicer = self.slicer
        slicer.mrmlScene = self.scene
        slicer.app = self.app
        existing = getattr(slicer, "modules", None)
        if existing is not self.modules:
            if isinstance(existing, types.SimpleNamespace):
                # Keep attributes someone else put there (e.g. a scripted module's widget).
                for key, value in vars(existing).items():
                    if not hasattr(self.modules, key):
                        setattr(self.modules, key, value)
            slicer.modules = self.modules


@contextlib.contextmanager
def _quiet_vtk_text():
    """Silence VTK's console text (``vtkArchive`` prints an "Info: Zip: adding ..." pair per
    file of an ``.mrb``); errors and warnings still reach stderr through ``vtkLogger``."""
    from vtkmodules.vtkCommonCore import vtkOutputWindow

    window = vtkOutputWindow.GetInstance()
    mode = window.GetDisplayMode()
    window.SetDisplayModeToNever()
    try:
        yield
    finally:
        window.SetDisplayMode(mode)


def _share_directory(logic_name: str) -> Path | None:
    """Share folder for a logic, where an installed wheel ships one.

    Only the terminology lists exist (in trame-slicer's resources); located without importing
    trame-slicer, which would pull in the trame server stack.
    """
    if logic_name != "Terminologies":
        return None
    try:
        spec = importlib.util.find_spec("trame_slicer")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        folder = Path(location) / "resources" / "terminologies"
        if folder.is_dir():
            return folder
    return None


class HeadlessApplication:
    """The Qt-free part of ``slicer.app`` that ``slicer.util`` and the project's logic call."""

    applicationName = "NoduleMalignancy (headless slicer-core)"
    applicationVersion = "headless"
    majorVersion = 0
    minorVersion = 0

    def __init__(self, runtime: _HeadlessRuntime):
        self._runtime = runtime

    # Scene and logic -------------------------------------------------------------------------
    def mrmlScene(self):
        return self._runtime.scene

    def applicationLogic(self):
        return self._runtime.app_logic

    def coreIOManager(self) -> HeadlessIOManager:
        return self._runtime.io_manager

    def ioManager(self) -> HeadlessIOManager:
        return self._runtime.io_manager

    def layoutManager(self):
        """No views headless: callers must handle ``None`` as in Slicer's ``--no-main-window``."""
        return None

    # Paths -----------------------------------------------------------------------------------
    @property
    def temporaryPath(self) -> str:
        return str(self._runtime.temporary_path)

    @property
    def cachePath(self) -> str:
        return str(self._runtime.cache_dir)

    # Event loop and rendering (nothing to do without Qt) -------------------------------------
    def processEvents(self, *args, **kwargs) -> None:
        return None

    def pauseRender(self) -> None:
        self._runtime.app_logic.PauseRender()

    def resumeRender(self) -> None:
        self._runtime.app_logic.ResumeRender()

    def testingEnabled(self) -> bool:
        return False

    def isHeadless(self) -> bool:
        """Not a Slicer API: lets code ask whether it runs on this stand-in."""
        return True

    def __repr__(self) -> str:
        return f"<HeadlessApplication cache={self._runtime.cache_dir}>"


# File types as Slicer's IO manager names them, with the extensions that select them.
# The longest matching extension wins (".seg.nrrd" is a segmentation, ".nrrd" a volume).
_FILE_TYPE_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "SceneFile": (".mrb", ".mrml"),
    "SegmentationFile": (".seg.nrrd", ".seg.nhdr", ".seg.nii.gz", ".seg.nii", ".seg.vtm"),
    "VolumeFile": (
        ".nrrd",
        ".nhdr",
        ".nii.gz",
        ".nii",
        ".mha",
        ".mhd",
        ".hdr",
        ".img",
        ".img.gz",
        ".vti",
        ".mgz",
        ".mgh",
        ".mgh.gz",
        ".dcm",
        ".ima",
        ".png",
        ".tif",
        ".tiff",
        ".jpg",
        ".jpeg",
    ),
}

# MRML class -> file type for saving (first match in this order; subclasses match through IsA).
_NODE_FILE_TYPES: tuple[tuple[str, str], ...] = (
    ("vtkMRMLSegmentationNode", "SegmentationFile"),
    ("vtkMRMLVolumeNode", "VolumeFile"),
    ("vtkMRMLTableNode", "TableFile"),
)


def _bool(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _base_name(file_name: str) -> str:
    """Node name Slicer derives from a file: the name up to its first dot (QFileInfo.baseName)."""
    return Path(file_name).name.split(".")[0]


class HeadlessIOManager:
    """Qt-free stand-in for ``qSlicerCoreIOManager``: the calls ``slicer.util`` makes.

    Fenced to what the product, the self-test and the browser station use: reading volumes,
    segmentations and scenes (``.mrml``, ``.mrb``, scene directory); writing any node through
    its storage node (``saveNode`` / ``exportNode``) and the scene. Other file types are refused
    with a message, not half-supported. ``properties`` keys are Slicer's
    (``fileName``, ``name``, ``labelmap``, ``singleFile``, ``center``, ``discardOrientation``,
    ``autoWindowLevel``, ``show``, ``colorNodeID``, ``fileNames``, ``clear``, ``nodeID``,
    ``useCompression``).
    """

    def __init__(self, runtime: _HeadlessRuntime):
        self._runtime = runtime

    @property
    def _scene(self):
        return self._runtime.scene

    def _logic(self, name: str):
        logic = self._runtime.logics.get(name)
        if logic is None:
            raise RuntimeError(f"module logic {name!r} is not available in the headless runtime")
        return logic

    # File types ------------------------------------------------------------------------------
    def fileType(self, fileName) -> str:
        """The Slicer file type for a path, from its extension ("NoFile" when unknown)."""
        name = str(fileName).lower()
        best, best_len = "NoFile", 0
        for file_type, extensions in _FILE_TYPE_EXTENSIONS.items():
            for ext in extensions:
                if name.endswith(ext) and len(ext) > best_len:
                    best, best_len = file_type, len(ext)
        return best

    def fileWriterFileType(self, node) -> str:
        for class_name, file_type in _NODE_FILE_TYPES:
            if node is not None and node.IsA(class_name):
                return file_type
        return "NoFile"

    def fileWriterExtensions(self, node) -> list[str]:
        """Slicer-style format strings, e.g. ``"NRRD (.nrrd)"``, the node's storage can write.

        The storage node's own list when it has one; the volume archetype storage node's list
        is empty on the wheel (it is filled from ITK IO factories Slicer registers), so fall
        back to the extensions this manager reads for the node's file type.
        """
        storage = node.CreateDefaultStorageNode() if node is not None else None
        formats: list[str] = []
        if storage is not None:
            types_ = storage.GetSupportedWriteFileTypes()
            formats = [types_.GetValue(i) for i in range(types_.GetNumberOfValues())]
        if not formats and node is not None:
            file_type = self.fileWriterFileType(node)
            formats = [
                f"{ext.lstrip('.').upper()} ({ext})"
                for ext in _FILE_TYPE_EXTENSIONS.get(file_type, ())
                if ext not in (".dcm", ".ima", ".json")
            ]
        return formats

    def extractKnownExtension(self, fileName, node) -> str:
        from slicer import vtkDataFileFormatHelper

        name = str(fileName).lower()
        best = ""
        for fmt in self.fileWriterExtensions(node):
            ext = vtkDataFileFormatHelper.GetFileExtensionFromFormatString(fmt)
            if ext and name.endswith(ext.lower()) and len(ext) > len(best):
                best = ext
        return best

    # Loading ---------------------------------------------------------------------------------
    def loadNodes(self, fileType, properties, loadedNodes=None, userMessages=None) -> bool:
        """Load one file into the scene; loaded nodes are appended to ``loadedNodes``."""
        properties = dict(properties)
        file_name = str(properties.get("fileName", ""))
        if not file_name:
            self._message(userMessages, "loadNodes: no fileName given")
            return False
        if not Path(file_name).exists():
            self._message(userMessages, f"file not found: {file_name}")
            return False
        loaders = {
            "VolumeFile": self._load_volume,
            "SegmentationFile": self._load_segmentation,
            "SceneFile": self._load_scene,
        }
        loader = loaders.get(str(fileType))
        if loader is None:
            self._message(
                userMessages,
                f"file type {fileType!r} is not read by the headless runtime (it reads volumes, "
                "segmentations and scenes: what this module uses); use Slicer for other types",
            )
            return False
        try:
            nodes = loader(file_name, properties, userMessages)
        except Exception as exc:  # surface as Slicer does: False plus a user message
            self._message(userMessages, f"failed to load {file_name}: {exc}")
            return False
        if nodes is None:
            return False
        if loadedNodes is not None:
            for node in nodes:
                loadedNodes.AddItem(node)
        return True

    def loadNodesAndGetFirst(self, fileType, properties):
        from vtkmodules.vtkCommonCore import vtkCollection

        collection = vtkCollection()
        if not self.loadNodes(fileType, properties, collection):
            return None
        return collection.GetItemAsObject(0) if collection.GetNumberOfItems() else None

    def _load_volume(self, file_name, properties, messages):
        from vtkmodules.vtkCommonCore import vtkStringArray

        name = str(properties.get("name") or _base_name(file_name))
        options = 0
        for key, bit in (
            ("labelmap", 0x1),
            ("center", 0x2),
            ("singleFile", 0x4),
            ("autoWindowLevel", 0x8),
            ("discardOrientation", 0x10),
        ):
            if key in properties and _bool(properties[key]):
                options |= bit
        logic = self._logic("Volumes")
        if "fileNames" in properties:
            file_list = vtkStringArray()
            for f in properties["fileNames"]:
                file_list.InsertNextValue(str(f))
            node = logic.AddArchetypeVolume(file_name, name, options, file_list)
        else:
            node = logic.AddArchetypeVolume(file_name, name, options)
        if node is None:
            self._message(messages, f"could not read a volume from {file_name}")
            return None
        color_id = properties.get("colorNodeID")
        if color_id and node.GetDisplayNode() is not None:
            node.GetDisplayNode().SetAndObserveColorNodeID(str(color_id))
        if _bool(properties.get("show", True)):
            self._select_volume(node)
        return [node]

    def _select_volume(self, node) -> None:
        app_logic = self._runtime.app_logic
        selection = app_logic.GetSelectionNode()
        if selection is None:
            return
        if node.IsA("vtkMRMLLabelMapVolumeNode"):
            selection.SetReferenceActiveLabelVolumeID(node.GetID())
        else:
            selection.SetReferenceActiveVolumeID(node.GetID())
        app_logic.PropagateVolumeSelection(0)

    def _load_segmentation(self, file_name, properties, messages):
        from slicer import vtkMRMLMessageCollection

        name = str(properties.get("name") or "")
        auto_opacities = _bool(properties.get("autoOpacities", True))
        color_node = None
        if properties.get("colorNodeID"):
            color_node = self._scene.GetNodeByID(str(properties["colorNodeID"]))
        msgs = messages if messages is not None else vtkMRMLMessageCollection()
        node = self._logic("Segmentations").LoadSegmentationFromFile(
            file_name, auto_opacities, name or None, color_node, msgs
        )
        return [node] if node is not None else None

    def _load_scene(self, file_name, properties, messages):
        from slicer import vtkMRMLMessageCollection

        msgs = messages if messages is not None else vtkMRMLMessageCollection()
        clear = _bool(properties.get("clear", False))
        path = Path(file_name).resolve()
        scene = self._scene
        if path.suffix.lower() in (".mrb", ".zip"):
            with _quiet_vtk_text():
                ok = bool(scene.ReadFromMRB(str(path), clear, msgs))
        else:
            scene.SetURL(str(path))
            ok = bool(scene.Connect(msgs) if clear else scene.Import(msgs))
        if clear:
            self._runtime.restore_defaults()
        return [] if ok else None

    # Saving ----------------------------------------------------------------------------------
    def saveNodes(self, fileType, properties, userMessages=None) -> bool:
        """Save a node (``nodeID``) or the whole scene (``SceneFile``) to ``fileName``."""
        properties = dict(properties)
        file_name = str(properties.get("fileName", ""))
        if not file_name:
            self._message(userMessages, "saveNodes: no fileName given")
            return False
        try:
            if str(fileType) == "SceneFile":
                return self._save_scene(file_name, userMessages)
            node = self._scene.GetNodeByID(str(properties.get("nodeID", "")))
            if node is None:
                self._message(userMessages, f"saveNodes: no node {properties.get('nodeID')!r}")
                return False
            storage = node.GetStorageNode()
            if storage is None:
                node.AddDefaultStorageNode()
                storage = node.GetStorageNode()
            if storage is None:
                self._message(userMessages, f"{node.GetClassName()} cannot be stored to a file")
                return False
            return self._write(node, storage, file_name, properties, userMessages)
        except Exception as exc:
            self._message(userMessages, f"failed to save {file_name}: {exc}")
            return False

    def exportNodes(
        self,
        nodeIDs,
        fileNames,
        properties,
        hardenTransform=False,
        userMessages=None,
    ) -> bool:
        """Write nodes to files without changing their storage nodes (``slicer.util.exportNode``)."""
        nodeIDs, fileNames = list(nodeIDs), list(fileNames)
        if len(nodeIDs) != len(fileNames):
            self._message(userMessages, "exportNodes: one file name per node ID is needed")
            return False
        ok = True
        for node_id, file_name in zip(nodeIDs, fileNames, strict=True):
            node = self._scene.GetNodeByID(str(node_id))
            if node is None:
                self._message(userMessages, f"exportNodes: no node {node_id!r}")
                ok = False
                continue
            if hardenTransform and getattr(node, "GetParentTransformNode", lambda: None)():
                self._message(
                    userMessages, "exportNodes: world=True with a parent transform is not supported"
                )
                ok = False
                continue
            storage = node.CreateDefaultStorageNode()
            if storage is None:
                self._message(userMessages, f"{node.GetClassName()} cannot be stored to a file")
                ok = False
                continue
            ok = self._write(node, storage, str(file_name), dict(properties), userMessages) and ok
        return ok

    def _write(self, node, storage, file_name, properties, messages) -> bool:
        Path(file_name).parent.mkdir(parents=True, exist_ok=True)
        storage.SetFileName(str(file_name))
        if "useCompression" in properties:
            storage.SetUseCompression(int(_bool(properties["useCompression"])))
        if properties.get("fileFormat") and hasattr(storage, "SetWriteFileFormat"):
            storage.SetWriteFileFormat(str(properties["fileFormat"]))
        if not storage.WriteData(node):
            self._message(messages, f"could not write {node.GetName()} to {file_name}")
            return False
        return True

    def _save_scene(self, file_name, messages) -> bool:
        from slicer import vtkMRMLMessageCollection

        msgs = messages if messages is not None else vtkMRMLMessageCollection()
        path = Path(file_name).resolve()
        scene = self._scene
        if path.suffix.lower() == ".mrb":
            path.parent.mkdir(parents=True, exist_ok=True)
            with _quiet_vtk_text():
                return bool(scene.WriteToMRB(str(path), None, msgs))
        if path.suffix.lower() == ".mrml":
            path.parent.mkdir(parents=True, exist_ok=True)
            scene.SetRootDirectory(str(path.parent))
            scene.SetURL(str(path))
            return bool(scene.Commit())
        path.mkdir(parents=True, exist_ok=True)
        return bool(scene.SaveSceneToSlicerDataBundleDirectory(str(path), None, msgs))

    @staticmethod
    def _message(messages, text: str) -> None:
        logger.error(text)
        if messages is not None:
            from vtkmodules.vtkCommonCore import vtkCommand

            messages.AddMessage(vtkCommand.ErrorEvent, text)
