"""stm-live: real-time segmentation of scanning tunnelling microscope images.

The data flows one way: ``source -> Frame -> levelled Frame -> Segmentation
-> detections -> sinks``. Importing this package is cheap and never imports
torch; the trainer (``stm_live.train``) is the only place that does.
"""

from .errors import ConfigError, ModelError, ScanReadError, StmLiveError, WireError
from .frame import Detection, Frame, Segmentation

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "Detection",
    "Frame",
    "ModelError",
    "ScanReadError",
    "Segmentation",
    "StmLiveError",
    "WireError",
    "__version__",
]
