"""ZeroMQ protocol v1: the one place where messages become bytes and bytes messages.

Every message is multipart ``[topic, header, payload?]``: the topic as UTF-8
text, the header a UTF-8 JSON object with ``"v": 1``, and, where the kind has
one, a payload of raw C-ordered values whose numpy ``dtype.str`` (byte order
explicit) the header names. Nothing is ever pickled. ``docs/protocol.md``
explains the protocol for people writing controller bridges.

Each header (and the stored result record) is defined once, in
:mod:`stm_live.wire.topics`: its fields, which are required, their kinds and
ranges, what they mean and what is expected of them, and the rules across
fields. From those definitions come the checks of every encoder and decoder,
the committed JSON schemas ``stm_live/schemas/<topic>.json`` and the field
tables of ``docs/protocol.md`` (``python -m stm_live.wire --schemas --docs``
rewrites both; tests fail when either is out of date).

The package:

* :mod:`~stm_live.wire.topics`: the definitions, and the protocol's constants;
* :mod:`~stm_live.wire.schema`: the vocabulary they are written in (field kinds,
  their checks and their JSON Schema);
* :mod:`~stm_live.wire.messages`: the dataclasses the decoders return;
* :mod:`~stm_live.wire.codec`: encoders and decoders (parts, JSON, payloads);
* :mod:`~stm_live.wire.docs`: the generator of the schema files and the docs' tables.

Ingest (controller bridge -> daemon):

* ``stm.line``: one scan line, :class:`LineMessage`;
* ``stm.frame``: a whole image at once, :class:`FrameMessage`;
* ``stm.end``: a scan is over (or aborted), :class:`EndMessage`.

Publish (daemon -> subscribers):

* ``seg.partial`` / ``seg.frame``: segmentation of a partial / finished
  frame, :class:`SegMessage`;
* ``level.line``: one levelled scan line as it arrived, :class:`LevelLineMessage`;
* ``status``: the heartbeat, :class:`StatusMessage`.

The daemon's headers are built by :mod:`stm_live.publish.documents` (the one
composer); :func:`encode_document` checks a document's header with the same
checks as the decoders and returns its parts; :func:`check_header` checks any
header, or a stored result record (``"result"``), on its own.

Every ``encode_*`` function is pure and returns ``list[bytes]`` ready for
``socket.send_multipart``; every ``decode_*`` function checks the part count,
the header (JSON object, version, every field's presence, type and range,
no unknown fields, the rules across fields) and the payload (dtype, length,
values), and raises :class:`~stm_live.errors.WireError` naming the topic, the
scan, the field, the bad value and what was expected. Encoders run the same
header checks, so what one side sends the other accepts.

Payload values (decided here, documented in ``docs/protocol.md``):

* dtypes: :data:`PAYLOAD_DTYPES` (float32/float64/int16/int32/uint16 in
  either byte order); decoded arrays are native-endian C-contiguous float32;
* NaN in a line or frame payload marks a missing pixel (or, in a frame, an
  unscanned row) and is kept; a line or frame that is *entirely* NaN carries
  no data and is rejected (send nothing for a missing line);
* infinities, and float64 values beyond the float32 range, are rejected.
"""

from __future__ import annotations

from .codec import (
    Buffer,
    check_header,
    decode,
    decode_decision,
    decode_end,
    decode_frame,
    decode_ingest,
    decode_level_line,
    decode_line,
    decode_seg,
    decode_status,
    encode,
    encode_decision,
    encode_document,
    encode_end,
    encode_frame,
    encode_line,
    encode_seg,
    encode_status,
    load_schema,
)
from .messages import (
    DecisionMessage,
    EndMessage,
    FrameMessage,
    IngestMessage,
    LevelLineMessage,
    LineMessage,
    Message,
    ScanInfo,
    SegMessage,
    StatusMessage,
)
from .topics import (
    INGEST_TOPICS,
    MAX_PIXELS,
    MAX_SIDE,
    PAYLOAD_DTYPES,
    PROTOCOL_VERSION,
    PUBLISH_TOPICS,
    REQUIRED_COUNTERS,
    SPECS,
    STATES,
    TOPIC_DECISION,
    TOPIC_END,
    TOPIC_FRAME,
    TOPIC_LEVEL_LINE,
    TOPIC_LINE,
    TOPIC_PARTIAL,
    TOPIC_SEG_FRAME,
    TOPIC_STATUS,
    TOPICS,
)

__all__ = [
    "INGEST_TOPICS",
    "MAX_PIXELS",
    "MAX_SIDE",
    "PAYLOAD_DTYPES",
    "PROTOCOL_VERSION",
    "PUBLISH_TOPICS",
    "REQUIRED_COUNTERS",
    "SPECS",
    "STATES",
    "TOPICS",
    "TOPIC_DECISION",
    "TOPIC_END",
    "TOPIC_FRAME",
    "TOPIC_LEVEL_LINE",
    "TOPIC_LINE",
    "TOPIC_PARTIAL",
    "TOPIC_SEG_FRAME",
    "TOPIC_STATUS",
    "Buffer",
    "DecisionMessage",
    "EndMessage",
    "FrameMessage",
    "IngestMessage",
    "LevelLineMessage",
    "LineMessage",
    "Message",
    "ScanInfo",
    "SegMessage",
    "StatusMessage",
    "check_header",
    "decode",
    "decode_decision",
    "decode_end",
    "decode_frame",
    "decode_ingest",
    "decode_level_line",
    "decode_line",
    "decode_seg",
    "decode_status",
    "encode",
    "encode_decision",
    "encode_document",
    "encode_end",
    "encode_frame",
    "encode_line",
    "encode_seg",
    "encode_status",
    "load_schema",
]
