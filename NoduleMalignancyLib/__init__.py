"""NoduleMalignancy library: everything that is not Qt, in floors (docs/DESIGN.md §1).

``core/`` (numpy + torch) < ``files/`` (formats, reports) < ``mrml/`` (Slicer MRML) <
the applications (``training/``, ``evaluation/``, ``cli.py``); each imports only downwards.
"""

__version__ = "0.1.0"
