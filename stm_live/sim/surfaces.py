"""The simulated surfaces: lattices, defect classes and how each looks at a given bias.

Every length is in nm and every height is an *apparent* STM height in nm at the
surface's nominal tip resolution; nothing depends on the pixel count.
Contrast depends on the bias polarity where the physics says it does
(filled states: negative sample bias, electrons tunnel out of the sample;
empty states: positive sample bias). Within one polarity the magnitude of the
bias is not modelled.

``si001-ash3``
    Si(001):H, the (2x1) monohydride: dimer rows 0.768 nm apart, dimers
    0.384 nm apart along a row, the two Si-H of a dimer 0.23 nm apart across
    it. Single-atomic steps are a0/4 = 0.136 nm high and the dimer rows turn
    by 90 degrees from one terrace to the next (the diamond lattice's bonds
    alternate direction layer by layer). Classes:

    * ``AsH3``: arsine fragments on a dimer. Mostly the dissociated
      AsH2 + H pair (AsH2 on one atom of a dimer: an oval lobe on one side of
      the row, elongated along it, with a faint depression on the dimer's
      H side), also molecular AsH3 (a round, broad, low bump on a dimer atom)
      and AsH + 2H (a bump between two dimers, centred on the row). Wider and
      lower than a dangling bond; less bright in empty states.
    * ``dangling_bond``: a Si atom without its H. A single DB sits on one
      atom of a dimer (off the row centre); it is charged, so in filled
      states it is a bright compact protrusion and in empty states a weaker
      bright core inside a dark halo (band bending). A double DB (a bare
      dimer) is centred on the row, elongated across it, and about as bright
      at both polarities.
    * ``dimer_vacancy``: one, two, or 1+2 missing dimers in a row: a dark
      depression about one row wide, elongated along the row, where the row
      corrugation vanishes. Dark at both polarities.

``ge001``
    Clean Ge(001) with buckled dimers in the c(4x2) arrangement: rows
    0.80 nm apart, dimers 0.40 nm apart, the raised atom of each dimer
    alternating side along a row (the zig-zag) and in antiphase between
    neighbouring rows. Filled states show the raised atoms, empty states the
    lowered ones, so the zig-zag inverts with the bias polarity. Steps are
    0.141 nm high with the rows turned by 90 degrees. Classes:

    * ``dimer_vacancy``: one or two missing dimers (dark).
    * ``ad_dimer``: a Ge ad-dimer, a bright elongated bump, either on top of
      a row (long axis along the row) or in the trough between rows (long
      axis across).
    * ``phase_defect``: a segment of a row whose buckling is shifted by one
      dimer (a pair of phasons): no height change, only the zig-zag breaks.
      Subtle by nature, and invisible when the pixels are too coarse to
      resolve single dimers.

``tio2-110``
    Rutile TiO2(110)-(1x1), imaged as usual in empty states: bright rows of
    five-fold Ti along [001], 0.65 nm apart, with the geometrically higher but
    electronically dark bridging-oxygen rows between them; 0.296 nm period
    along the rows. Steps are 0.325 nm high, rows keep their direction.
    Classes, both bright spots on the dark bridging-oxygen rows:

    * ``O_vacancy``: a missing bridging oxygen: a faint spot.
    * ``hydroxyl``: H on a bridging oxygen: brighter and slightly larger
      than a vacancy; pairs on neighbouring sites (double hydroxyls) form
      a longer, brighter spot.

    In filled states the row contrast inverts and both defects fade.
"""

from __future__ import annotations

import math
import types
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from .lattice import Atom, Cell

__all__ = [
    "RANDOM_CLASSES",
    "RANDOM_MAX_CLASSES",
    "RANDOM_SURFACE",
    "SURFACES",
    "Blob",
    "FeatureKind",
    "SurfaceModel",
    "random_surface_model",
    "surface_classes",
    "surface_model",
]

#: The surfaces the simulator knows.
SURFACES: tuple[str, ...] = ("si001-ash3", "ge001", "tio2-110")

_CLASSES: dict[str, tuple[str, ...]] = {
    "si001-ash3": ("AsH3", "dangling_bond", "dimer_vacancy"),
    "ge001": ("dimer_vacancy", "ad_dimer", "phase_defect"),
    "tio2-110": ("O_vacancy", "hydroxyl"),
}


@dataclass(frozen=True)
class Blob:
    """One part of a feature: a (super-)Gaussian in the row frame, relative to the feature centre.

    The profile ``g = exp(-((u / sigma_u)^(2 power_u) + (v / sigma_v)^(2 power_v)) / 2)``
    (``power`` 2 makes a flat-topped box along that axis) scales three things:
    ``height`` adds apparent height (nm); ``flatten`` removes that fraction
    (0..1) of the lattice corrugation (a vacancy has no dimer to image);
    ``phase`` swaps that fraction of the lattice for its one-dimer-shifted copy
    (a phase defect).
    """

    du: float
    dv: float
    height: float
    sigma_u: float
    sigma_v: float
    power_u: int = 1
    power_v: int = 1
    flatten: float = 0.0
    phase: float = 0.0


@dataclass(frozen=True)
class FeatureKind:
    """One appearance of a feature class (or unlabelled clutter when ``class_name`` is None).

    The centre sits at ``(site_u, site_v)`` nm from a lattice site (row
    centre, dimer); with ``mirror`` each instance picks a side of the row at
    random. ``footprint_u`` / ``footprint_v`` are the semi-axes (nm, across /
    along the rows) of the ground-truth mask ellipse: the feature's visible
    extent.
    """

    class_name: str | None
    name: str
    weight: float
    site_u: float
    site_v: float
    mirror: bool
    blobs: tuple[Blob, ...]
    footprint_u: float
    footprint_v: float


@dataclass(frozen=True)
class SurfaceModel:
    """Everything the simulator needs to know about one surface at one bias polarity."""

    name: str
    classes: tuple[str, ...]
    bias_v: float
    setpoint_a: float
    cell: Cell
    corrugation_nm: float
    row_period_nm: float
    site_period_nm: float
    step_height_nm: float
    rotate_across_steps: bool
    tip_sigma_nm: float
    kinds: tuple[FeatureKind, ...]
    density_per_nm2: Mapping[str, float]
    clutter_per_nm2: float
    step_count_weights: tuple[float, ...]
    phase_shift_v_nm: float | None = None
    extra: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "density_per_nm2", types.MappingProxyType(dict(self.density_per_nm2)))
        object.__setattr__(self, "extra", types.MappingProxyType(dict(self.extra)))


def _check_surface(surface: str) -> None:
    if surface not in _CLASSES:
        raise ValueError(f"unknown surface {surface!r}; expected one of {', '.join(SURFACES)}")


def surface_classes(surface: str) -> tuple[str, ...]:
    """The ground-truth class names of ``surface``, in mask order (mask value ``k`` is ``classes[k - 1]``).

    Examples
    --------
    >>> surface_classes("si001-ash3")
    ('AsH3', 'dangling_bond', 'dimer_vacancy')
    """
    _check_surface(surface)
    return _CLASSES[surface]


def _clutter(scale: float) -> tuple[FeatureKind, ...]:
    # Large unlabelled bright clusters (contaminants, silicide or oxide
    # islands) seen on every real surface: the model must learn to leave
    # them alone. Their footprint only keeps labelled features off them.
    return tuple(
        FeatureKind(None, f"cluster {r:.1f} nm", w, 0.0, 0.0, False,
                    (Blob(0.0, 0.0, h * scale, r, r * f),), 2.2 * r, 2.2 * r * f)
        for r, f, h, w in ((0.8, 1.0, 0.4, 0.5), (1.3, 0.8, 0.6, 0.3), (2.0, 0.9, 0.9, 0.2))
    )


def _si001_ash3(bias_v: float) -> SurfaceModel:
    filled = bias_v < 0
    atoms: tuple[Atom, ...]
    if filled:
        # The Si-H bonds and the dimer bond between them: rows look like
        # chains of beans.
        atoms = (Atom(-0.115, 0.0, 1.0, 0.16, 0.14), Atom(0.115, 0.0, 1.0, 0.16, 0.14),
                 Atom(0.0, 0.0, 0.5, 0.12, 0.12))
        corrugation = 0.065
    else:
        atoms = (Atom(-0.115, 0.0, 1.0, 0.15, 0.14), Atom(0.115, 0.0, 1.0, 0.15, 0.14))
        corrugation = 0.045
    cell = Cell(0.768, 0.384, atoms)
    a = 0.384
    db_single: tuple[Blob, ...]
    if filled:
        db_single = (Blob(0.0, 0.0, 0.20, 0.26, 0.26),)
        db_double = (Blob(0.0, 0.0, 0.14, 0.36, 0.25),)
        ash2 = (Blob(0.0, 0.0, 0.085, 0.30, 0.40), Blob(-0.26, 0.0, -0.015, 0.15, 0.2))
        ash3 = (Blob(0.0, 0.0, 0.075, 0.40, 0.40),)
        ash1 = (Blob(0.0, 0.0, 0.080, 0.32, 0.50),)
        dv_depth = -0.13
    else:
        db_single = (Blob(0.0, 0.0, 0.10, 0.25, 0.25), Blob(0.0, 0.0, -0.025, 0.85, 0.85))
        db_double = (Blob(0.0, 0.0, 0.10, 0.36, 0.25),)
        ash2 = (Blob(0.0, 0.0, 0.050, 0.30, 0.40), Blob(-0.26, 0.0, -0.010, 0.15, 0.2))
        ash3 = (Blob(0.0, 0.0, 0.045, 0.40, 0.40),)
        ash1 = (Blob(0.0, 0.0, 0.050, 0.32, 0.50),)
        dv_depth = -0.10

    def vacancy(missing: tuple[float, ...]) -> tuple[Blob, ...]:
        # One dark Gaussian per missing dimer (at ``missing`` nm along the
        # row from the centre): neighbours merge into an elongated trough.
        blobs: list[Blob] = []
        for dv in missing:
            blobs.append(Blob(0.0, dv, dv_depth, 0.36, 0.22, flatten=0.9))
        return tuple(blobs)

    kinds = (
        FeatureKind("AsH3", "AsH2+H", 0.6, 0.15, 0.0, True, ash2, 0.50, 0.60),
        FeatureKind("AsH3", "AsH3", 0.25, 0.115, 0.0, True, ash3, 0.58, 0.58),
        FeatureKind("AsH3", "AsH+2H", 0.15, 0.0, 0.5 * a, False, ash1, 0.48, 0.70),
        FeatureKind("dangling_bond", "single DB", 0.75, 0.115, 0.0, True, db_single, 0.45, 0.45),
        FeatureKind("dangling_bond", "double DB", 0.25, 0.0, 0.0, False, db_double, 0.55, 0.42),
        FeatureKind("dimer_vacancy", "1-DV", 0.3, 0.0, 0.0, False, vacancy((0.0,)), 0.50, 0.42),
        FeatureKind("dimer_vacancy", "2-DV", 0.4, 0.0, 0.5 * a, False, vacancy((-0.5 * a, 0.5 * a)), 0.50, 0.60),
        # 1 + 2: dimer n-1 and dimers n+1, n+2 missing, dimer n kept; centre at n + 1/2.
        FeatureKind("dimer_vacancy", "1+2-DV", 0.3, 0.0, 0.5 * a, False,
                    vacancy((-1.5 * a, 0.5 * a, 1.5 * a)), 0.50, 0.98),
    )
    return SurfaceModel(
        name="si001-ash3",
        classes=_CLASSES["si001-ash3"],
        bias_v=bias_v,
        setpoint_a=50e-12,
        cell=cell,
        corrugation_nm=corrugation,
        row_period_nm=0.768,
        site_period_nm=a,
        step_height_nm=0.136,
        rotate_across_steps=True,
        tip_sigma_nm=0.12,
        kinds=kinds + _clutter(1.0),
        density_per_nm2={"AsH3": 0.012, "dangling_bond": 0.010, "dimer_vacancy": 0.030},
        clutter_per_nm2=5e-4,
        step_count_weights=(0.4, 0.4, 0.2),
    )


def _ge001(bias_v: float) -> SurfaceModel:
    filled = bias_v < 0
    up, down = (1.0, 0.35) if filled else (0.45, 1.0)
    atoms: list[Atom] = []
    for k, u0 in enumerate((0.0, 0.8)):
        for n, v0 in enumerate((0.0, 0.4)):
            side = 1.0 if (k + n) % 2 == 0 else -1.0
            atoms.append(Atom(u0 + side * 0.11, v0, up, 0.14, 0.15))
            atoms.append(Atom(u0 - side * 0.11, v0, down, 0.14, 0.15))
            atoms.append(Atom(u0, v0, 0.3, 0.12, 0.12))
    cell = Cell(1.6, 0.8, tuple(atoms))
    a = 0.40
    s = 1.0 if filled else 0.85
    dv_depth = -0.085 if filled else -0.07

    def vacancy(n: int) -> tuple[Blob, ...]:
        blobs: list[Blob] = []
        for i in range(n):
            dv = (i - 0.5 * (n - 1)) * a
            blobs.append(Blob(0.0, dv, dv_depth, 0.34, 0.23, flatten=0.9))
        return tuple(blobs)

    def phase(n: int) -> tuple[Blob, ...]:
        # The swapped segment, plus the slight brightening of the two
        # phasons' symmetric (fast-flipping) dimers at its ends.
        half = 0.5 * n * a
        return (Blob(0.0, 0.0, 0.0, 0.40, half, power_u=2, power_v=2, phase=1.0),
                Blob(0.0, -half, 0.012, 0.3, 0.2), Blob(0.0, half, 0.012, 0.3, 0.2))

    kinds = (
        FeatureKind("dimer_vacancy", "1-DV", 0.5, 0.0, 0.0, False, vacancy(1), 0.50, 0.42),
        FeatureKind("dimer_vacancy", "2-DV", 0.5, 0.0, 0.5 * a, False, vacancy(2), 0.50, 0.62),
        FeatureKind("ad_dimer", "on-row ad-dimer", 0.5, 0.0, 0.5 * a, False,
                    (Blob(0.0, 0.0, 0.12 * s, 0.30, 0.45),), 0.48, 0.68),
        FeatureKind("ad_dimer", "trough ad-dimer", 0.5, 0.4, 0.0, False,
                    (Blob(0.0, 0.0, 0.10 * s, 0.45, 0.30),), 0.66, 0.48),
        FeatureKind("phase_defect", "3-dimer phase defect", 0.4, 0.0, 0.0, False, phase(3), 0.45, 0.80),
        FeatureKind("phase_defect", "4-dimer phase defect", 0.35, 0.0, 0.5 * a, False, phase(4), 0.45, 1.00),
        FeatureKind("phase_defect", "6-dimer phase defect", 0.25, 0.0, 0.5 * a, False, phase(6), 0.45, 1.40),
    )
    return SurfaceModel(
        name="ge001",
        classes=_CLASSES["ge001"],
        bias_v=bias_v,
        setpoint_a=100e-12,
        cell=cell,
        corrugation_nm=0.040 if filled else 0.030,
        row_period_nm=0.80,
        site_period_nm=a,
        step_height_nm=0.141,
        rotate_across_steps=True,
        tip_sigma_nm=0.10,
        kinds=kinds + _clutter(1.0),
        density_per_nm2={"dimer_vacancy": 0.010, "ad_dimer": 0.008, "phase_defect": 0.008},
        clutter_per_nm2=2e-4,
        step_count_weights=(0.4, 0.4, 0.2),
        phase_shift_v_nm=a,
    )


def _tio2_110(bias_v: float) -> SurfaceModel:
    empty = bias_v > 0
    if empty:
        atoms = (Atom(0.0, 0.0, 1.0, 0.16, 0.12), Atom(0.325, 0.148, 0.25, 0.10, 0.10))
        s = 1.0
    else:
        atoms = (Atom(0.0, 0.0, 0.3, 0.16, 0.12), Atom(0.325, 0.148, 1.0, 0.12, 0.10))
        s = 0.4
    cell = Cell(0.65, 0.296, atoms)
    kinds = (
        FeatureKind("O_vacancy", "bridging-O vacancy", 1.0, 0.325, 0.148, False,
                    (Blob(0.0, 0.0, 0.07 * s, 0.26, 0.24),), 0.45, 0.42),
        FeatureKind("hydroxyl", "single OH", 0.7, 0.325, 0.148, False,
                    (Blob(0.0, 0.0, 0.11 * s, 0.28, 0.26),), 0.48, 0.46),
        FeatureKind("hydroxyl", "double OH", 0.3, 0.325, 0.296, False,
                    (Blob(0.0, -0.148, 0.10 * s, 0.28, 0.26), Blob(0.0, 0.148, 0.10 * s, 0.28, 0.26)),
                    0.48, 0.62),
    )
    return SurfaceModel(
        name="tio2-110",
        classes=_CLASSES["tio2-110"],
        bias_v=bias_v,
        setpoint_a=100e-12,
        cell=cell,
        corrugation_nm=0.14 if empty else 0.08,
        row_period_nm=0.65,
        site_period_nm=0.296,
        step_height_nm=0.325,
        rotate_across_steps=False,
        tip_sigma_nm=0.20,
        kinds=kinds + _clutter(0.8),
        density_per_nm2={"O_vacancy": 0.12, "hydroxyl": 0.16},
        clutter_per_nm2=1e-4,
        step_count_weights=(0.6, 0.4),
    )


_DEFAULT_BIAS_V = {"si001-ash3": -2.0, "ge001": -1.5, "tio2-110": 1.2}


def surface_model(surface: str, *, bias_v: float | None = None) -> SurfaceModel:
    """The model of ``surface`` at sample bias ``bias_v`` (V; default: the usual imaging bias).

    Defaults: ``si001-ash3`` -2.0 V (filled states), ``ge001`` -1.5 V,
    ``tio2-110`` +1.2 V (empty states).

    Examples
    --------
    >>> m = surface_model("tio2-110")
    >>> m.bias_v, m.row_period_nm, m.classes
    (1.2, 0.65, ('O_vacancy', 'hydroxyl'))
    """
    _check_surface(surface)
    bias = _DEFAULT_BIAS_V[surface] if bias_v is None else float(bias_v)
    if not (math.isfinite(bias) and bias != 0):
        raise ValueError(f"bias_v must be a non-zero number of volts, got {bias_v!r}")
    return {"si001-ash3": _si001_ash3, "ge001": _ge001, "tio2-110": _tio2_110}[surface](bias)


#: Name of the randomised training surface (:func:`random_surface_model`); not a real surface.
RANDOM_SURFACE = "random"
#: Most feature classes a random surface has; they are named ``r1`` .. ``r5``.
RANDOM_MAX_CLASSES = 5
#: The class names of random surfaces: a surface with K classes has the first K.
RANDOM_CLASSES: tuple[str, ...] = tuple(f"r{k + 1}" for k in range(RANDOM_MAX_CLASSES))


def _random_kind(
    name: str, label: str, weight: float, site_u: float, site_v: float, mirror: bool, blobs: tuple[Blob, ...]
) -> FeatureKind:
    # The truth footprint: the blobs' reach, within sane bounds.
    reach_u = max(abs(b.du) + 1.3 * b.sigma_u for b in blobs)
    reach_v = max(abs(b.dv) + 1.3 * b.sigma_v for b in blobs)
    return FeatureKind(name, label, weight, site_u, site_v, mirror, blobs,
                       float(np.clip(reach_u, 0.35, 1.2)), float(np.clip(reach_v, 0.35, 1.4)))


def _twin_kinds(
    model: list[FeatureKind], name: str, rng: np.random.Generator, row: float, site: float
) -> list[FeatureKind]:
    """Class ``name`` as a near twin of ``model``'s class: the same shapes, 1.4-2.6x higher or lower, a little
    narrower or wider, on the same or another site.

    Many real defect pairs differ only so (Si(001): AsH3 fragments and dangling
    bonds are both round bright protrusions, 0.1 nm apart in height): without
    such pairs the random classes are all easy to tell apart, and the encoder
    never has to learn to measure height and width.
    """
    gain = float(np.exp(rng.uniform(np.log(1.4), np.log(2.6)))) ** (1.0 if rng.random() < 0.5 else -1.0)
    width = float(rng.uniform(0.7, 1.2))
    move = bool(rng.random() < 0.5)
    out = []
    for j, kind in enumerate(model):
        blobs = tuple(replace(b, height=b.height * gain, sigma_u=b.sigma_u * width, sigma_v=b.sigma_v * width)
                      for b in kind.blobs)
        site_u = float(rng.choice([0.0, 0.25, 0.5]) * row) if move else kind.site_u
        site_v = float(rng.choice([0.0, 0.5]) * site) if move else kind.site_v
        out.append(_random_kind(name, f"{name} kind {j + 1} (twin of {kind.class_name})",
                                float(rng.uniform(0.3, 1.0)), site_u, site_v, kind.mirror, blobs))
    return out


def random_surface_model(seed: int, *, twin_probability: float = 0.0, max_kinds: int = 2) -> SurfaceModel:
    """A randomised surface for training only: a random lattice and 3-5 random feature classes.

    Domain randomisation for the encoder: every call draws a new row
    lattice (period, atoms, corrugation), tip and step height, and new
    classes ``r1`` .. ``rK``, each one or two kinds of one to three
    (super-)Gaussian blobs, bright or dark, round or elongated, on a random
    lattice site (``max_kinds`` kinds at most). With ``twin_probability``
    a class after the first is instead a near twin of an earlier one: the
    same shapes, higher or lower and a little narrower or wider (the hard
    pairs of real surfaces). A class means something only within one frame, so
    training uses such frames for episodes (prototypes from part of a
    frame classify the rest), never for fixed prototypes.

    >>> m = random_surface_model(3)
    >>> m.name, 3 <= len(m.classes) <= 5, m.classes[0]
    ('random', True, 'r1')
    """
    rng = np.random.default_rng(seed)
    row = float(rng.uniform(0.5, 1.0))
    site = float(rng.uniform(0.28, 0.6))
    atoms = tuple(
        Atom(float(rng.uniform(-0.3, 0.3) * row), float(rng.uniform(-0.3, 0.3) * site), float(rng.uniform(0.3, 1.0)),
             float(rng.uniform(0.1, 0.18)), float(rng.uniform(0.1, 0.18)))
        for _ in range(int(rng.integers(1, 4)))
    )
    n_classes = int(rng.integers(3, RANDOM_MAX_CLASSES + 1))
    classes = RANDOM_CLASSES[:n_classes]
    kinds: list[FeatureKind] = []
    originals: list[str] = []
    for name in classes:
        # No draw at probability 0: the same seed then gives the same surface as before twins existed.
        if originals and twin_probability > 0 and rng.random() < twin_probability:
            twin_of = str(rng.choice(originals))
            kinds.extend(_twin_kinds([k for k in kinds if k.class_name == twin_of], name, rng, row, site))
            continue
        originals.append(name)
        for j in range(int(rng.integers(1, max_kinds + 1))):
            blobs = []
            sign = 1.0 if rng.random() < 0.6 else -1.0
            for _ in range(int(rng.integers(1, 4))):
                su, sv = float(rng.uniform(0.15, 0.5)), float(rng.uniform(0.15, 0.5))
                blobs.append(Blob(
                    float(rng.uniform(-0.3, 0.3)), float(rng.uniform(-0.3, 0.3)),
                    sign * float(rng.uniform(0.03, 0.22)) * (1.0 if rng.random() < 0.8 else -0.3),
                    su, sv, power_u=int(rng.integers(1, 3)), power_v=int(rng.integers(1, 3)),
                    flatten=float(rng.uniform(0.5, 1.0)) if sign < 0 and rng.random() < 0.5 else 0.0,
                ))
            kinds.append(_random_kind(
                name, f"{name} kind {j + 1}", float(rng.uniform(0.3, 1.0)),
                float(rng.choice([0.0, 0.25, 0.5]) * row), float(rng.choice([0.0, 0.5]) * site),
                bool(rng.random() < 0.5), tuple(blobs),
            ))
    return SurfaceModel(
        name=RANDOM_SURFACE,
        classes=classes,
        bias_v=-2.0,
        setpoint_a=50e-12,
        cell=Cell(row, site, atoms),
        corrugation_nm=float(rng.uniform(0.02, 0.1)),
        row_period_nm=row,
        site_period_nm=site,
        step_height_nm=float(rng.uniform(0.1, 0.3)),
        rotate_across_steps=bool(rng.random() < 0.5),
        tip_sigma_nm=float(rng.uniform(0.08, 0.18)),
        kinds=tuple(kinds) + _clutter(float(rng.uniform(0.5, 1.0))),
        density_per_nm2={name: float(rng.uniform(0.006, 0.03)) for name in classes},
        clutter_per_nm2=float(rng.uniform(0.0, 5e-4)),
        step_count_weights=(0.4, 0.4, 0.2),
    )
