"""The segmentation model: file format, running it, adapting it, reading its output.

* :mod:`~stm_live.model.format`: the ONNX contract (prototype head, metadata).
* :mod:`~stm_live.model.prepare`: level -> resample -> normalise, shared with training.
* :mod:`~stm_live.model.runtime`: :class:`SegmentationModel`, frame -> Segmentation.
* :mod:`~stm_live.model.prototypes`: few-shot adaptation (prototypes from labels).
* :mod:`~stm_live.model.instances`: class map -> detections.

Submodules are imported on use, so ``import stm_live.model`` stays cheap.
"""
