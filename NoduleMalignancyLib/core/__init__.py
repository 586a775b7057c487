"""The numpy/torch core (floor 0, docs/DESIGN.md §1): never imports ``slicer``, ``vtk`` or Qt."""
