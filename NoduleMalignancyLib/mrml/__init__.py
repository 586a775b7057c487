"""The Slicer MRML layer (floor 2, docs/DESIGN.md §1): runtime, logic, node writers, runner, self-test. No Qt."""
