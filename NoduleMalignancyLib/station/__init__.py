"""The browser reading station: a trame-slicer page over the MRML logic (docs/DESIGN.md §15)."""
