"""The offline trainer: the only part of stm-live that imports torch.

* :mod:`~stm_live.train.settings`: ``train.yaml`` -> validated settings.
* :mod:`~stm_live.train.data`: simulated frames prepared like the runtime prepares images.
* :mod:`~stm_live.train.net`: the encoder.
* :mod:`~stm_live.train.fit`: self-supervised + prototype + episodic training, checkpoints.
* :mod:`~stm_live.train.export`: ONNX export with metadata.
* :mod:`~stm_live.train.pipeline`: ``stm-live train`` end to end.
"""
