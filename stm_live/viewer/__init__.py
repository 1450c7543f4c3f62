"""The page: the scan growing in the browser with its detections, and teach-in by clicking on it.

* :mod:`.state`: what the page shows, fed by the document stream; the messages for browsers;
* :mod:`.server`: aiohttp on a thread of its own, WebSocket pushes, per-browser bounded buffers;
* :mod:`.teach`: support set, versions, adapt from clicks, replay of a version file;
* :mod:`.pages`: the page inside the daemon (``stm-live run``/``demo``), apart from it
  (``stm-live view --connect``) and for labelling one file (``stm-live label``);
* ``static/``: the page itself (plain HTML, JavaScript and CSS; nothing fetched at run time).

``docs/viewer.md`` describes the page, the messages and the version file.
"""

from .pages import DaemonPage, LabelPage, RemotePage, ViewerSink
from .server import ViewerServer
from .state import ViewerFeed
from .teach import TeachIn, TeachSettings, adapt_from_support, read_version, replay

__all__ = [
    "DaemonPage",
    "LabelPage",
    "RemotePage",
    "TeachIn",
    "TeachSettings",
    "ViewerFeed",
    "ViewerServer",
    "ViewerSink",
    "adapt_from_support",
    "read_version",
    "replay",
]
