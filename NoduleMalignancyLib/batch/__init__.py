"""Batch paths: training-patch export, LUNA25 challenge I/O, cohort runs (docs/DESIGN.md §13)."""
