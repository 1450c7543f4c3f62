"""Synthetic STM surfaces and a simulated microscope.

The simulator trains and tests the model, drives the demo and stands in for
the microscope in the daemon's tests. The pure core is :func:`simulate_scan`
(arrays in memory, no files); :func:`write_simulated` / :func:`read_truth`
and :func:`write_paced` are the file edges.

>>> from stm_live.sim import simulate_scan, Artefacts
>>> scan = simulate_scan("tio2-110", size_nm=8.0, pixels=64, seed=3, artefacts=Artefacts.none())
>>> scan.classes, scan.frame("Z", "backward").unit
(('O_vacancy', 'hydroxyl'), 'm')
"""

from __future__ import annotations

from .artefacts import Artefacts
from .scan import Instance, SimulatedScan, simulate_scan
from .surfaces import SURFACES, surface_classes

__all__ = [
    "SURFACES",
    "Artefacts",
    "Instance",
    "SimulatedScan",
    "simulate_scan",
    "surface_classes",
]
