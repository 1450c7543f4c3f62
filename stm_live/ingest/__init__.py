"""Sources: scan lines from the wire assembled into frames, finished files from watched folders.

* :mod:`.stream`: :class:`~.stream.LineSource`, the bound ZeroMQ SUB socket (I/O edge);
* :mod:`.assemble`: :class:`~.assemble.LineAssembler`, lines -> frames (pure);
* :mod:`.watch`: :class:`~.watch.FolderWatcher` (watchdog at the edge) and the pure
  completeness check :func:`~.watch.file_state`.
"""
