"""Results for Gwyddion: one ``.gwy`` file per frame, the detections as masks.

Gwyddion holds one mask per channel, so a result file has one channel per
class, each the same levelled image with that class's pixels as its mask
(``docs/formats.md``)::

    channel 0       "<channel> levelled (all classes)"   mask: every detected class
    channel k       "<channel> levelled: <class k>"       mask: class k only (k = 1 .. C)
    /0/meta         source, model, content hash, counts (Gwyddion's metadata browser)

A user opens the file where they already work: Gwyddion shows each mask over
its channel, and its grain tools (Data Process > Grains) measure the masked
features of one class. Files are written with ``gwyfile`` (MIT), a small
maintained implementation of the documented GWY format; Gwyddion itself
reads them back in the tests.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StmLiveError

__all__ = ["gwy_bytes", "gwy_channels", "gwy_container", "require_gwyfile", "write_gwy"]

_RED = (255, 0, 0)
#: Mask colour of channel 0 (every class): amber, apart from the class colours.
ALL_CLASSES_COLOUR = (255, 170, 0)
#: Opacity of the masks in Gwyddion (the overlay PNGs use 0.45 too).
MASK_ALPHA = 0.45


def gwy_channels(classes: Sequence[str], *, channel: str = "Z") -> list[str]:
    """Titles of the channels of a result file, in order (pure).

    >>> gwy_channels(["AsH3", "dangling_bond"])
    ['Z levelled (all classes)', 'Z levelled: AsH3', 'Z levelled: dangling_bond']
    """
    return [f"{channel} levelled (all classes)", *(f"{channel} levelled: {name}" for name in classes)]


def require_gwyfile() -> Any:
    """The ``gwyfile.objects`` module, or a :class:`StmLiveError` saying how to install it."""
    try:
        import gwyfile.objects
    except ImportError:
        raise StmLiveError(
            "writing .gwy files needs the gwyfile package: pip install 'stm-live[batch]' (or give --no-gwy)"
        ) from None
    return gwyfile.objects


def gwy_container(
    image: np.ndarray,
    class_map: np.ndarray,
    classes: Sequence[str],
    *,
    width_m: float,
    height_m: float,
    unit: str = "m",
    channel: str = "Z",
    colours: Sequence[tuple[int, int, int]] = (),
    meta: Mapping[str, object] | None = None,
) -> Any:
    """A Gwyddion container (``gwyfile.objects.GwyContainer``) of one frame's result.

    Parameters
    ----------
    image : numpy.ndarray
        ``(rows, cols)`` levelled image in ``unit`` (display orientation: row
        0 at the top). Rows not acquired (NaN) are stored as the median of
        the acquired pixels: Gwyddion has no missing values.
    class_map : numpy.ndarray
        ``(rows, cols)`` integers: 0 background, ``k`` is ``classes[k - 1]``.
    classes : sequence of str
        Class names, one channel each.
    width_m, height_m : float
        Physical size of the frame, m.
    unit : str
        Unit of ``image`` values (``"m"`` for Z).
    channel : str
        Name of the scan channel, for the titles.
    colours : sequence of (r, g, b)
        Mask colour of class ``k`` is ``colours[(k - 1) % len(colours)]``
        (0..255); red when empty. Channel 0's mask is amber (``ALL_CLASSES_COLOUR``).
    meta : Mapping, optional
        Text shown in Gwyddion's metadata browser of channel 0.

    Returns
    -------
    gwyfile.objects.GwyContainer
        Keys ``/k/data``, ``/k/data/title``, ``/k/mask`` and the mask
        colour ``/k/mask/{red,green,blue,alpha}`` for k = 0 .. C.

    Raises
    ------
    ValueError
        Shapes that differ, a non-2-D image, no finite pixel or a class
        value above ``len(classes)``.
    """
    objects = require_gwyfile()
    data = np.asarray(image, dtype=np.float64)
    labels = np.asarray(class_map)
    if data.ndim != 2 or labels.shape != data.shape:
        raise ValueError(f"gwy_container needs a 2-D image and a class map of its shape, got {data.shape}, "
                         f"{labels.shape}")
    finite = np.isfinite(data)
    if not finite.any():
        raise ValueError("gwy_container: the image has no finite pixel")
    if labels.size and int(labels.max()) > len(classes):
        raise ValueError(f"class map holds class {int(labels.max())} but only {len(classes)} classes are named")
    if not finite.all():
        data = np.where(finite, data, float(np.median(data[finite])))
    data = np.ascontiguousarray(data)
    palette = list(colours) or [_RED]
    container = objects.GwyContainer()

    def field(values: np.ndarray, z_unit: str) -> Any:
        return objects.GwyDataField(np.ascontiguousarray(values, dtype=np.float64), xreal=float(width_m),
                                    yreal=float(height_m), si_unit_xy="m", si_unit_z=z_unit)

    masks = [labels > 0] + [labels == k for k in range(1, len(classes) + 1)]
    for k, (title, mask) in enumerate(zip(gwy_channels(classes, channel=channel), masks, strict=True)):
        container[f"/{k}/data"] = field(data, unit)
        container[f"/{k}/data/title"] = title
        container[f"/{k}/mask"] = field(mask.astype(np.float64), "")
        red, green, blue = palette[(k - 1) % len(palette)] if k else ALL_CLASSES_COLOUR
        container[f"/{k}/mask/red"] = red / 255.0
        container[f"/{k}/mask/green"] = green / 255.0
        container[f"/{k}/mask/blue"] = blue / 255.0
        container[f"/{k}/mask/alpha"] = MASK_ALPHA
    if meta:
        text = {str(k): str(v) for k, v in meta.items()}
        # Typed as strings explicitly: gwyfile would store a one-letter value as a char.
        container["/0/meta"] = objects.GwyContainer(text, typecodes=dict.fromkeys(text, "s"))
    return container


def gwy_bytes(container: Any) -> bytes:
    """The ``.gwy`` file of a container (:func:`gwy_container`): the ``GWYP`` magic and the serialised container."""
    return b"GWYP" + bytes(container.serialize())


def write_gwy(path: str | os.PathLike[str], content: Any) -> Path:
    """Write a ``.gwy`` file atomically (temporary file, then rename).

    Parameters
    ----------
    path : path-like
        The file; replaced if it exists.
    content : bytes or GwyContainer
        The file's bytes (:func:`gwy_bytes`) or the container (:func:`gwy_container`).

    Returns
    -------
    Path
        ``path``.
    """
    data = content if isinstance(content, bytes | bytearray | memoryview) else gwy_bytes(content)
    out = Path(path)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out
