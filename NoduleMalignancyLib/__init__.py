"""NoduleMalignancy library: everything that is not Qt.

The torch/numpy core (geometry, VOI sampling, network, ensemble, evidence, training) never imports
``slicer``; only the MRML layer does.
"""

__version__ = "0.1.0"
