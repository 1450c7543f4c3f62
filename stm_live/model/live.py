"""Segmenting a scan while it is acquired: the model re-runs only where new lines change it.

:class:`LiveSegmenter` receives levelled scan lines one at a time
(:meth:`~LiveSegmenter.add_row`) and, when asked (:meth:`~LiveSegmenter.segment`),
returns a :class:`~stm_live.frame.Segmentation` of everything acquired so far.

Work per call is bounded by the receptive field, not the frame:

* each line is resampled along x to the model pitch as it arrives (O(cols));
* model rows are made from those with the same taps as the whole-frame
  resampler (:func:`stm_live.level.resample_to_pitch`), so a model row
  computed live equals the whole-frame one;
* the encoder runs on a window from ``2 * context`` model rows behind the
  acquisition front to the front, its start aligned to the encoder's
  pooling grid, so results inside the window equal a whole-frame run; rows
  more than ``context`` behind the front are final, the rest provisional;
* detections are searched for only from the oldest feature that can still
  change to the front: a feature is final once its rows, and the rows a
  feature it could merge with would need, are final. The result equals a
  search over all acquired rows (``tests/test_model_live.py``), and the work
  per line no longer grows with the rows acquired.

Normalisation statistics are taken from the rows acquired so far and frozen
once ``freeze_rows`` model rows exist (a stable contrast for the rest of the
frame). The final result of a completed scan should come from
:meth:`SegmentationModel.segment` on the whole frame, as for a file. A head
with feature centring (``stm-live adapt --centre-features``) centres on the
features of the window it runs on, so once statistics are frozen its live
classes can differ from a whole-frame run's.
"""

from __future__ import annotations

import time

import numpy as np

from ..frame import Detection, Segmentation
from ..level.prepare import resampling_taps, robust_stats
from .format import PROBS_NAME
from .instances import Feature, class_map_from_probs, class_regions, number_features, per_class
from .prepare import grid_index
from .runtime import SegmentationModel

__all__ = ["LiveSegmenter"]

#: The encoder pools twice by 2: windows start on multiples of 4 model rows.
_POOL_ALIGN = 4


class LiveSegmenter:
    """Incremental segmentation of one scan.

    Parameters
    ----------
    model : SegmentationModel
        A model with a head.
    rows, cols : int
        Frame size in input pixels.
    nm_per_px : tuple of float
        Input pitch ``(x, y)``, nm.
    scan_direction : {"down", "up"}
        Which edge acquisition starts from (rows are display rows either way).
    min_score, min_area_nm2 : float, optional
        Detection filters, as for :meth:`SegmentationModel.segment` (None:
        the model's calibrated per-class thresholds).
    freeze_rows : int
        Model rows after which normalisation statistics stop changing.
    unit : str
        Unit of the line values (``Frame.unit``): a model's contrast gate
        applies to frames in the unit it was measured in.
    """

    def __init__(
        self,
        model: SegmentationModel,
        *,
        rows: int,
        cols: int,
        nm_per_px: tuple[float, float],
        scan_direction: str = "down",
        min_score: float | None = None,
        min_area_nm2: float | None = None,
        freeze_rows: int = 32,
        unit: str = "m",
    ) -> None:
        if scan_direction not in ("down", "up"):
            raise ValueError(f"scan_direction must be 'down' or 'up', got {scan_direction!r}")
        self.model = model
        self.unit = unit
        self.rows, self.cols = rows, cols
        self.nm_per_px = (float(nm_per_px[0]), float(nm_per_px[1]))
        self.up = scan_direction == "up"
        self.min_score, self.min_area_nm2 = model.thresholds(min_score, min_area_nm2)
        pitch = model.info.nm_per_px
        self.h = max(1, round(rows * self.nm_per_px[1] / pitch))
        self.w = max(1, round(cols * self.nm_per_px[0] / pitch))
        self._row_index, self._row_weight = resampling_taps(rows, self.h, pitch / self.nm_per_px[1])
        self._col_index, self._col_weight = resampling_taps(cols, self.w, pitch / self.nm_per_px[0])
        # A model row is complete once its farthest tap (in scan order) has arrived.
        self._row_needs = (self._row_index.min(axis=1) if self.up else self._row_index.max(axis=1)).astype(np.int64)
        self._needed = self._row_weight > 0
        self.context = int(model.info.context_px)
        self.freeze_rows = freeze_rows
        n_out = len(model.classes) + 1
        self._colres = np.zeros((rows, self.w), np.float32)  # lines resampled along x
        self._have = np.zeros(rows, bool)
        self._probs = np.zeros((n_out, self.h, self.w), np.float32)
        self._class_map = np.zeros((self.h, self.w), np.uint8)
        self._claimed = np.zeros((self.h, self.w), bool)  # pixels of final features
        # The class map at the input grid (nearest model pixel, as to_image_grid), kept up to date.
        self._image_row = grid_index(rows, self.h, pitch / self.nm_per_px[1])
        self._image_col = grid_index(cols, self.w, pitch / self.nm_per_px[0])
        self._full = np.zeros((rows, cols), np.uint8)
        self._filled = np.zeros(rows, bool)
        # Instances: features that can no longer change (y counted in scan order,
        # from the start edge), and the scan-order model row the search starts at.
        self._final: list[Feature] = []
        self._search_from = 0
        self._done_model = 0  # model rows with final-or-provisional output, counted from the start edge
        self._stats: tuple[float, float] | None = None
        self._frozen = False
        self._front_input = -1  # farthest input row (scan order) received
        self.lines = 0
        #: Display rows ``[start, stop)`` of the class map the last :meth:`segment` rewrote (rows
        #: outside it are as in the previous result): what a live view needs to redraw.
        self.changed_rows: tuple[int, int] = (0, 0)

    # ----------------------------------------------------------- input side
    def add_row(self, row: int, levelled: np.ndarray) -> None:
        """Add one levelled line (display row index ``row``, ``cols`` values; NaN = missing pixels)."""
        if not 0 <= row < self.rows:
            raise ValueError(f"row {row} outside the frame's 0..{self.rows - 1}")
        line = np.asarray(levelled, dtype=np.float32)
        if line.shape != (self.cols,):
            raise ValueError(f"line of {line.shape} values, expected ({self.cols},)")
        finite = np.isfinite(line)
        if not finite.any():
            return
        if not finite.all():
            line = np.where(finite, line, np.float32(np.median(line[finite])))
        acc = np.zeros(self.w, np.float32)
        for k in range(self._col_index.shape[1]):
            acc += line[self._col_index[:, k]] * self._col_weight[:, k]
        self._colres[row] = acc
        self._have[row] = True
        order = self.rows - 1 - row if self.up else row
        self._front_input = max(self._front_input, order)
        self.lines += 1

    @property
    def rows_done(self) -> int:
        """Input rows from the start edge up to the farthest line received."""
        return self._front_input + 1

    def _complete_model_rows(self) -> int:
        """Model rows (counted from the start edge) whose input rows have all arrived or been passed."""
        if self._front_input < 0:
            return 0
        front_row = self.rows - 1 - self._front_input if self.up else self._front_input
        ok = self._row_needs >= front_row if self.up else self._row_needs <= front_row
        return int(ok[::-1].sum()) if self.up else int(ok.sum())

    def _model_rows(self, lo: int, hi: int) -> np.ndarray:
        """Model rows ``lo..hi`` (display order) from the column-resampled lines; missing lines left out."""
        idx = self._row_index[lo:hi]
        weight = self._row_weight[lo:hi] * self._have[idx] * self._needed[lo:hi]
        total = weight.sum(axis=1, keepdims=True)
        values = (self._colres[idx] * weight[:, :, None]).sum(axis=1)
        out = np.where(total > 0, values / np.maximum(total, 1e-12), np.nan)
        return out.astype(np.float32)

    # ---------------------------------------------------------- model side
    def _normalise(self, block: np.ndarray) -> np.ndarray:
        """Normalise like :func:`~stm_live.level.normalise_robust`, with statistics frozen mid-scan."""
        options = self.model.info.normalisation
        if not self._frozen or self._stats is None:
            self._stats = robust_stats(block, scale=options.get("scale", "mad"))
        centre, spread = self._stats
        clip = options.get("clip")
        out = np.where(np.isfinite(block), block, centre)
        out = (out - centre) / spread if spread > 0 else np.zeros_like(out)
        if clip is not None:
            np.clip(out, -clip, clip, out=out)
        return out.astype(np.float32)

    def segment(self) -> Segmentation:
        """Segmentation of all rows acquired so far (class map at the input grid)."""
        t0 = time.perf_counter()
        done = self._complete_model_rows()
        if done == 0:
            return self._result(np.zeros((self.rows, self.cols), np.uint8), (), t0, {})
        # Display-order range of complete model rows.
        lo_all, hi_all = (self.h - done, self.h) if self.up else (0, done)
        # Rows to (re)compute: everything not yet final, with context behind it
        # (counted from the start edge); all of it while statistics still change.
        redo_from = max(0, self._done_model - self.context) if self._frozen else 0
        behind = max(0, redo_from - self.context)
        if self.up:
            # The window's top must sit on the pooling grid of the whole frame
            # (rows above the front are filler until they are scanned).
            lo = lo_all - lo_all % _POOL_ALIGN
            hi = self.h - behind
        else:
            lo = behind - behind % _POOL_ALIGN
            hi = hi_all
        t1 = time.perf_counter()
        image = self._normalise(self._model_rows(lo, hi))
        if not self._frozen and done >= min(self.freeze_rows, self.h):
            self._frozen = True
        t2 = time.perf_counter()
        probs = self.model.run(image)[PROBS_NAME][0]
        t3 = time.perf_counter()
        # Keep the window's rows that had their full context on the already-final side.
        if self.up:
            keep_lo, keep_hi = lo_all, (hi if hi == self.h else hi - self.context)
        else:
            keep_lo, keep_hi = (lo if lo == 0 else lo + self.context), hi
        self._probs[:, keep_lo:keep_hi] = probs[:, keep_lo - lo : keep_hi - lo]
        self._class_map[keep_lo:keep_hi] = class_map_from_probs(self._probs[:, keep_lo:keep_hi])
        self._done_model = done
        detections = self._instances(done)
        if self.model.contrast_gate and detections:
            # on the lines received so far (resampled along x to the model's pitch), as segment() does on the frame
            detections = self.model.contrast_gate.keep(
                detections, self._colres, (self.model.info.nm_per_px, self.nm_per_px[1]), unit=self.unit,
                have_rows=self._have)
        t4 = time.perf_counter()
        # The class map at the input grid: only acquired rows, and of those only
        # the ones whose model row was rewritten or that were not filled yet.
        index = np.arange(self.rows)
        acquired = index >= self.rows - self.rows_done if self.up else index < self.rows_done
        rewritten = (self._image_row >= keep_lo) & (self._image_row < keep_hi)
        update = acquired & (rewritten | ~self._filled)
        self._full[update] = self._class_map[np.ix_(self._image_row[update], self._image_col)]
        self._filled |= update
        changed = np.flatnonzero(update)
        self.changed_rows = (int(changed[0]), int(changed[-1]) + 1) if changed.size else (0, 0)
        full = self._full.copy()
        t5 = time.perf_counter()
        timings = {"prepare": (t2 - t1) * 1e3, "infer": (t3 - t2) * 1e3, "instances": (t4 - t3) * 1e3,
                   "map": (t5 - t4) * 1e3}
        return self._result(full, tuple(detections), t0, timings)

    def _open_from(self) -> int:
        """Scan-order model row from which later calls may still rewrite probabilities.

        Mirrors the window of :meth:`segment` for the next call (rows before
        it are final, and the window only moves forward); 0 while the
        normalisation statistics are not frozen, since every call then
        recomputes everything.
        """
        if not self._frozen:
            return 0
        behind = max(0, max(0, self._done_model - self.context) - self.context)
        if not self.up:
            behind -= behind % _POOL_ALIGN
        return behind + self.context if behind > 0 else 0

    def _instances(self, done: int) -> list[Detection]:
        """Detections in the ``done`` acquired model rows: cached final features plus a search of the rest.

        The search covers scan-order rows from ``self._search_from`` to the
        front, leaving out the pixels of final features. A region is closed
        when it ends before the row before the first row that can still
        change: it cannot grow, and its centre is fixed. A group of regions
        (one feature, merged or not) is final when all its regions are
        closed and, when its class merges features, every centre is at least
        the merge distance before the first row a region of the class that
        is not closed, or not yet seen, can reach: it cannot merge again
        (closed regions of other groups are already farther than that).
        The next search starts at the first row of any region not final.
        """
        pitch = self.model.info.nm_per_px
        start = self._search_from
        strip = slice(self.h - done, self.h - start) if self.up else slice(start, done)
        flip = slice(None, None, -1 if self.up else 1)
        claimed = self._claimed[strip][flip]  # a view: final pixels are marked through it
        class_map = np.where(claimed, np.uint8(0), self._class_map[strip][flip])
        probs = self._probs[:, strip][:, flip]
        open_from = self._open_from()
        next_from = open_from
        current: list[Feature] = []
        for k, name in enumerate(self.model.classes, start=1):
            split_px = per_class(self.model.info.detection.get("split_within_nm", 0.0), name) / pitch
            regions = class_regions(class_map, probs, k, nm_per_px=(pitch, pitch), row_offset=start, extents=True,
                                    split_px=split_px)
            if regions is None:
                continue
            assert regions.first_row is not None and regions.last_row is not None and regions.labels is not None
            within = per_class(self.model.info.detection.get("merge_within_nm", 0.0), name)
            group = regions.groups(within)
            closed = regions.last_row < open_from - 1
            final = np.ones(int(group.max()) + 1, bool)
            np.logical_and.at(final, group, closed)
            if within > 0:
                # Centres of regions that can still change lie at or after the first row they occupy.
                moving_from = min([open_from, *regions.first_row[~closed].tolist()])
                np.logical_and.at(final, group, regions.y_nm < (moving_from + 0.5) * pitch - within - 1e-9)
            non_final = ~final[group]
            if non_final.any():
                next_from = min(next_from, int(regions.first_row[non_final].min()))
            min_area, min_score = per_class(self.min_area_nm2, name), per_class(self.min_score, name)
            for target, select in ((self._final, final), (current, ~final)):
                target.extend(regions.features(name, group, select=select, min_pixels=2,
                                               min_area_nm2=min_area, min_score=min_score))
            done_regions = np.flatnonzero(final[group])
            if len(done_regions):
                claimed[np.isin(regions.labels, done_regions + 1)] = True
        self._search_from = next_from
        every = self._final + current
        if self.up:
            height = self.h * pitch
            every = [(height - y, x, name, area, score) for y, x, name, area, score in every]
        return number_features(every)

    def _result(self, class_map: np.ndarray, detections: tuple, t0: float, timings: dict[str, float]) -> Segmentation:
        timings = {**timings, "total": (time.perf_counter() - t0) * 1e3}
        return Segmentation(
            classes=self.model.classes,
            class_map=class_map,
            detections=detections,
            model_id=self.model.id,
            model_name=self.model.name,
            timings_ms=timings,
            rows_done=self.rows_done,
        )
