"""Reading studies: study files, the SQLite store of readers' ratings, MRMC analysis (docs/DESIGN.md §14)."""
