"""Sources: scan lines from the wire assembled into frames, finished files from watched folders.

* :mod:`.assemble`: :class:`LineAssembler`, lines -> frames (pure);
* :mod:`.watch`: :class:`FolderWatcher` (watchdog at the edge) and the pure
  completeness check :func:`file_state`.
"""
