"""What the daemon emits and where it goes: documents, the bus, and the sinks at the edge.

* :mod:`~stm_live.publish.documents`: the one composer of every document,
  message header and result record;
* :mod:`~stm_live.publish.bus`: :class:`DocumentBus`, the fan-out to sinks,
  each behind its own byte-bounded queue and thread;
* :mod:`~stm_live.publish.sinks`: the ZeroMQ publisher, the result store, the
  event log, the counters and the console;
* :mod:`~stm_live.publish.socket`, :mod:`~stm_live.publish.store`,
  :mod:`~stm_live.publish.events`: the PUB socket, the results folder and
  ``events.jsonl`` themselves.
"""

from .bus import DocumentBus, Sink, SinkStats
from .documents import Document, result_record, stored_record
from .events import EventLog
from .socket import Publisher
from .store import ResultStore, StoredResult, array_sha256, atomic_write, overlay_rgb

__all__ = [
    "Document",
    "DocumentBus",
    "EventLog",
    "Publisher",
    "ResultStore",
    "Sink",
    "SinkStats",
    "StoredResult",
    "array_sha256",
    "atomic_write",
    "overlay_rgb",
    "result_record",
    "stored_record",
]
