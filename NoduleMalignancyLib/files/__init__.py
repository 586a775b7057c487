"""File formats and reports (floor 1, docs/DESIGN.md §1): CT reading, writers, the report image, the LIDC XML."""
