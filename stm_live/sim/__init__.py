"""Synthetic STM surfaces and a simulated microscope.

The simulator trains and tests the model, drives the demo and stands in for
the microscope in the daemon's tests. The pure core is :func:`simulate_scan`
(arrays in memory, no files); :func:`write_simulated` / :func:`read_truth`
(a ``.sxm`` with its ground-truth sidecars) and :func:`write_paced` (a folder
filled at the pace of a microscope) are the file edges.

Modules: ``surfaces`` (what each surface and defect looks like), ``lattice``
(periodic lattices as Fourier sums), ``steps`` (terraces), ``features``
(placement, rendering, masks), ``artefacts`` (the instrument), ``realism`` (what real
Si(001):H frames show beyond the surface model), ``scan`` (the
microscope), ``truth`` and ``paced`` (files), ``measure`` (statistics that
compare images, real or simulated).

>>> from stm_live.sim import simulate_scan, Artefacts
>>> scan = simulate_scan("tio2-110", size_nm=8.0, pixels=64, seed=3, artefacts=Artefacts.none())
>>> scan.classes, scan.frame("Z", "backward").unit
(('O_vacancy', 'hydroxyl'), 'm')
"""

from __future__ import annotations

from .artefacts import Artefacts
from .paced import PacedFile, write_paced
from .realism import Realism
from .scan import Instance, SimulatedScan, simulate_scan
from .surfaces import SURFACES, surface_classes
from .truth import Truth, read_truth, write_simulated

__all__ = [
    "SURFACES",
    "Artefacts",
    "Instance",
    "PacedFile",
    "Realism",
    "SimulatedScan",
    "Truth",
    "read_truth",
    "simulate_scan",
    "surface_classes",
    "write_paced",
    "write_simulated",
]
