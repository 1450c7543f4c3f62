"""The service: workers that emit documents, wired to the sinks; nothing computed here.

* :mod:`~stm_live.daemon.service`: :class:`Daemon`, the wiring, start-up,
  heartbeat, signals and shut-down;
* :mod:`~stm_live.daemon.live`: the receiver and the live worker (scan lines
  -> levelled lines and partial results);
* :mod:`~stm_live.daemon.frames`: the whole-frame worker (finished scans and
  files -> results);
* :mod:`~stm_live.daemon.scans`: one object per scan being streamed;
* :mod:`~stm_live.daemon.queues`: byte-bounded queues between the threads;
* :mod:`~stm_live.daemon.state`: the results-folder lock and ``state.json``.
"""

from .service import Daemon
from .state import STATE_FILE, read_state

__all__ = ["STATE_FILE", "Daemon", "read_state"]
