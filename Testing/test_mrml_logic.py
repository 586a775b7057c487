"""Headless MRML logic: the module's self-test bodies on slicer-core, plus pytest-only checks.

The ``test_*`` methods of :class:`NoduleMalignancyLib.selftest.NoduleMalignancySelfTestMixin`
run here exactly as in Slicer's Reload and Test; this file adds the checks that only make sense
outside Slicer (module file syntax, UI and CMake wiring, dependency report, latency figures).
"""

from __future__ import annotations

import numpy as np
import pytest

from NoduleMalignancyLib import selftest


class TestNoduleMalignancyLogicHeadless(selftest.HeadlessSelfTestCase):
    """The shared self-test on the headless runtime (pytest collects it as unittest)."""
