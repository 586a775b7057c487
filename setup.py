"""Packages for setuptools: all found below NoduleMalignancyLib/, plus the shipped models/.

Why a setup.py: pyproject.toml can either find packages or list them, not both, and the shipped
ensemble (the top-level models/ folder) must join the wheel as NoduleMalignancyLib.models.
"""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["NoduleMalignancyLib*"]), "NoduleMalignancyLib.models"])
