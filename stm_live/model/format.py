"""The stm-live model file: an ONNX graph with a prototype head and its metadata inside.

Contract (format version 1)
---------------------------
* Input ``image``: float32 ``[N, 1, H, W]``, the levelled, resampled (to
  ``nm_per_px``) and normalised image; any ``H, W`` (fully convolutional).
* Output ``embedding``: float32 ``[N, D, H, W]``, one D-dimensional vector per
  pixel (the encoder).
* Output ``probs``: float32 ``[N, 1 + C, H, W]``, class probabilities,
  channel 0 = background, channel k = ``classes[k - 1]``. Only in models with
  a head; a bare encoder has ``embedding`` only.

The head is a prototype classifier. With prototypes ``p_m`` (``M`` of them,
each labelled with a class; background may have several), a pixel's
prototype logits are ``-||e - p_m||^2 / T``. Because softmax ignores terms
constant per pixel, ``-||e||^2`` can be dropped, which makes the head a 1x1
convolution with weight ``2 p_m / T`` and bias ``-||p_m||^2 / T``, followed by
a softmax over prototypes whose probabilities are summed per class. The softmax
is spelled out (max, subtract, exp, then a fixed 1x1 convolution that sums each
class's exponentials, divided by their total): onnxruntime's ``Softmax`` over
the channel axis of an ``NCHW`` tensor transposes it twice and took 65 ms of a
160 ms 512 x 512 inference on two cores; the spelled-out form takes 4 ms. Adapting to a new
surface replaces the three initializers and the metadata; the encoder is
untouched.

*Feature centring* (optional, :class:`FeatureCentring`; ``stm-live adapt
--centre-features`` sets it): the head first classifies as above, then takes the mean embedding
``mu`` of the pixels it found features at (background probability below
0.5), pulled towards the labelled images' own mean by a prior of
``prior_px`` pixels, and decides *which* feature class a pixel is with the
class prototypes moved to ``centred_k + mu``: what the frame's tip and
contrast do to all its features alike cancels. Whether a pixel is a feature
at all is left as it was: ``probs[0]`` is the first stage's background
probability and ``probs[k] = (1 - probs[0]) * q_k``, with ``q`` the softmax
over the moved class prototypes. ``mu`` is taken over the image the graph
sees: the whole frame, or the live path's window of rows.

Metadata (``metadata_props``, JSON values under ``stm_live.*`` keys) carries
everything the runtime needs: class names, pixel size, normalisation,
levelling, the prototypes and their provenance, training provenance and
metrics, the stm-live version, and the model id: a hash of everything that decides
what the model does (graph, weights, prototypes, pitch, levelling, normalisation,
detection thresholds, ...; :func:`model_id`) and of nothing else.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .. import __version__
from ..errors import ModelError

__all__ = [
    "BEHAVIOUR_KEYS",
    "FORMAT_VERSION",
    "HEAD_PREFIX",
    "INPUT_NAME",
    "FeatureCentring",
    "ModelInfo",
    "Prototypes",
    "attach_head",
    "has_head",
    "load_onnx",
    "model_id",
    "read_info",
    "restamp",
    "save_model",
    "strip_debug_info",
    "with_class_offsets",
]

FORMAT_VERSION = 1
INPUT_NAME = "image"
EMBEDDING_NAME = "embedding"
PROBS_NAME = "probs"
HEAD_PREFIX = "stm_live.head."
_META_PREFIX = "stm_live."


@dataclass(frozen=True)
class FeatureCentring:
    """Per-frame feature centring of a head (see the module description).

    ``centred`` is ``(C, D)``: class k's prototype less the mean embedding of
    the features of the image it was labelled on; ``feature_mean`` ``(D,)``
    the labelled images' mean feature embedding, what a frame's own mean is
    pulled towards with a weight of ``prior_px`` pixels (so a frame with few
    features is classified nearly as without centring).
    """

    centred: np.ndarray
    feature_mean: np.ndarray
    prior_px: float = 256.0

    def __post_init__(self) -> None:
        centred = np.ascontiguousarray(self.centred, dtype=np.float32)
        mean = np.ascontiguousarray(self.feature_mean, dtype=np.float32).reshape(-1)
        if centred.ndim != 2 or centred.shape[0] == 0 or centred.shape[1] != mean.shape[0]:
            raise ValueError(f"feature centring: centred prototypes {centred.shape}, feature mean {mean.shape}")
        if not (np.isfinite(centred).all() and np.isfinite(mean).all()):
            raise ValueError("feature centring contains NaN or inf")
        if not (np.isfinite(self.prior_px) and self.prior_px > 0):
            raise ValueError(f"feature centring prior must be positive, got {self.prior_px}")
        object.__setattr__(self, "centred", centred)
        object.__setattr__(self, "feature_mean", mean)
        object.__setattr__(self, "prior_px", float(self.prior_px))

    def to_json(self) -> dict[str, Any]:
        return {"centred": self.centred.tolist(), "feature_mean": self.feature_mean.tolist(),
                "prior_px": self.prior_px}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FeatureCentring:
        return cls(np.asarray(data["centred"], np.float32), np.asarray(data["feature_mean"], np.float32),
                   float(data["prior_px"]))


@dataclass(frozen=True)
class Prototypes:
    """Prototype vectors of a head.

    ``vectors`` is ``(M, D)`` float32; ``labels`` gives each prototype's class
    index (0 = background, k = ``classes[k - 1]``); ``temperature`` scales
    squared distances into logits (fitted on validation data so that the
    probabilities are calibrated). ``centring``, when set, makes the head
    centre each frame's features (one centred prototype per class, in class
    order; the module description says how).
    """

    vectors: np.ndarray
    labels: tuple[int, ...]
    temperature: float = 1.0
    centring: FeatureCentring | None = None
    #: Optional per-prototype logit offsets (``(M,)``): a calibrated prior, e.g. a background bias.
    offsets: np.ndarray | None = None

    def __post_init__(self) -> None:
        vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(self.labels) or vectors.shape[0] == 0:
            raise ValueError(f"prototypes: {vectors.shape} vectors for {len(self.labels)} labels")
        if self.offsets is not None:
            offsets = np.asarray(self.offsets, dtype=np.float32).reshape(-1)
            if offsets.shape[0] != vectors.shape[0] or not np.isfinite(offsets).all():
                raise ValueError(f"prototype offsets: {offsets.shape} finite values needed for {vectors.shape[0]}")
            object.__setattr__(self, "offsets", offsets)
        if not np.isfinite(vectors).all():
            raise ValueError("prototypes contain NaN or inf")
        if not (np.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"prototype temperature must be positive, got {self.temperature}")
        object.__setattr__(self, "vectors", vectors)
        object.__setattr__(self, "labels", tuple(int(label) for label in self.labels))
        c = self.centring
        if c is not None and (c.centred.shape[0] != self.n_classes - 1 or c.centred.shape[1] != vectors.shape[1]):
            raise ValueError(f"feature centring: {c.centred.shape} centred prototypes for {self.n_classes - 1} "
                             f"classes of dimension {vectors.shape[1]}")

    @property
    def n_classes(self) -> int:
        """Number of output channels, background included."""
        return max(self.labels) + 1

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "vectors": self.vectors.tolist(),
            "labels": list(self.labels),
            "temperature": self.temperature,
        }
        if self.centring is not None:
            out["centring"] = self.centring.to_json()
        if self.offsets is not None:
            out["offsets"] = self.offsets.tolist()
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Prototypes:
        centring = data.get("centring")
        offsets = data.get("offsets")
        return cls(np.asarray(data["vectors"], dtype=np.float32), tuple(data["labels"]), float(data["temperature"]),
                   None if centring is None else FeatureCentring.from_json(centring),
                   None if offsets is None else np.asarray(offsets, np.float32))


def with_class_offsets(prototypes: Prototypes, classes: Sequence[str], offsets: Mapping[str, float]) -> Prototypes:
    """``prototypes`` with ``offsets[class]`` added to the logit offset of every prototype of that class.

    A class's probability is the sum over its prototypes of their softmax terms, so one
    offset on all of them multiplies the class's odds by ``exp(offset)``: a calibrated prior.
    Classes not named keep their offsets; unknown names are an error.

    >>> p = Prototypes(np.zeros((3, 2), np.float32), (0, 1, 2))
    >>> with_class_offsets(p, ("a", "b"), {"b": -0.5}).offsets.tolist()
    [0.0, 0.0, -0.5]
    """
    unknown = sorted(set(offsets) - set(classes))
    if unknown:
        raise ValueError(f"class offsets for {unknown}: the model's classes are {list(classes)}")
    current = np.zeros(len(prototypes.labels), np.float32) if prototypes.offsets is None else prototypes.offsets
    add = np.array([0.0 if label == 0 else float(offsets.get(classes[label - 1], 0.0))
                    for label in prototypes.labels], np.float32)
    return replace(prototypes, offsets=(current + add).astype(np.float32))


@dataclass(frozen=True)
class ModelInfo:
    """What a model file says about itself (its ``stm_live.*`` metadata).

    Attributes
    ----------
    name : str
        Human name, e.g. ``"si001-ash3"``.
    classes : tuple of str
        Feature classes (background excluded), in output-channel order 1..C.
    nm_per_px : float
        Pixel pitch the model expects, nm. Inputs are resampled to it.
    embedding_dim : int
        Length D of the per-pixel embedding.
    context_px : int
        Pixels of context each side a prediction depends on (at ``nm_per_px``);
        the live path segments strips with this much margin.
    normalisation : Mapping
        How the image is normalised before the model (see ``stm_live.model.prepare``).
    levelling : Mapping
        How the image is levelled before the model.
    prototypes : Prototypes or None
        The head's prototypes; None for a bare encoder.
    provenance : Mapping
        Where the prototypes came from (training, or which labelled images/points).
    training : Mapping
        Training data hash, seed, steps, and metrics.
    surface : str or None
        The surface the head was made for.
    detection : Mapping
        Per-class detection settings: ``{"min_score": {class: p},
        "min_area_nm2": {class: a}}`` calibrated on validation frames for
        trained models, and ``"merge_within_nm"`` (pieces of one feature
        closer than this are merged) for models adapted from points;
        ``"min_contrast"`` (``{class: {"min", "bright", "inner_nm",
        "outer_nm"}}``, :mod:`stm_live.model.contrast`): detections fainter
        than a fraction of the faintest clicked example are not reported.
    id : str
        Hash of everything that decides the model's behaviour (:func:`model_id`;
        filled by :func:`save_model`).
    version : str
        stm-live version that wrote the file.
    """

    name: str
    classes: tuple[str, ...]
    nm_per_px: float
    embedding_dim: int
    context_px: int = 32
    normalisation: Mapping[str, Any] = field(default_factory=lambda: {"method": "robust"})
    levelling: Mapping[str, Any] = field(default_factory=dict)
    prototypes: Prototypes | None = None
    provenance: Mapping[str, Any] = field(default_factory=dict)
    training: Mapping[str, Any] = field(default_factory=dict)
    surface: str | None = None
    detection: Mapping[str, Any] = field(default_factory=dict)
    id: str = ""
    version: str = __version__

    def to_metadata(self) -> dict[str, str]:
        values: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "name": self.name,
            "classes": list(self.classes),
            "nm_per_px": self.nm_per_px,
            "embedding_dim": self.embedding_dim,
            "context_px": self.context_px,
            "normalisation": dict(self.normalisation),
            "levelling": dict(self.levelling),
            "prototypes": None if self.prototypes is None else self.prototypes.to_json(),
            "provenance": dict(self.provenance),
            "training": dict(self.training),
            "surface": self.surface,
            "detection": dict(self.detection),
            "id": self.id,
            "version": self.version,
        }
        return {_META_PREFIX + k: json.dumps(v) for k, v in values.items()}


_REQUIRED = ("format", "name", "classes", "nm_per_px", "embedding_dim")


def _meta_dict(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def read_info(model: onnx.ModelProto, *, source: str = "model") -> ModelInfo:
    """Parse the ``stm_live.*`` metadata of ``model``.

    Raises
    ------
    ModelError
        Metadata missing, malformed, or of an unknown format version.
    """
    raw = _meta_dict(model)
    values: dict[str, Any] = {}
    for key, text in raw.items():
        if key.startswith(_META_PREFIX):
            try:
                values[key[len(_META_PREFIX):]] = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ModelError(f"{source}: metadata {key} is not valid JSON: {exc}") from None
    missing = [k for k in _REQUIRED if k not in values]
    if missing:
        raise ModelError(
            f"{source}: not an stm-live model: metadata {', '.join(_META_PREFIX + k for k in missing)} missing "
            "(export models with `stm-live train` or `stm-live adapt`)"
        )
    if values["format"] != FORMAT_VERSION:
        raise ModelError(f"{source}: model format {values['format']!r}, this stm-live reads {FORMAT_VERSION}")
    try:
        protos = values.get("prototypes")
        return ModelInfo(
            name=str(values["name"]),
            classes=tuple(str(c) for c in values["classes"]),
            nm_per_px=float(values["nm_per_px"]),
            embedding_dim=int(values["embedding_dim"]),
            context_px=int(values.get("context_px", 32)),
            normalisation=values.get("normalisation") or {"method": "robust"},
            levelling=values.get("levelling") or {},
            prototypes=None if protos is None else Prototypes.from_json(protos),
            provenance=values.get("provenance") or {},
            training=values.get("training") or {},
            surface=values.get("surface"),
            detection=values.get("detection") or {},
            id=str(values.get("id", "")),
            version=str(values.get("version", "")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{source}: malformed stm-live metadata: {exc}") from None


def load_onnx(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Load an ONNX file with a clear error for missing or corrupt files."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"{p}: model file not found")
    try:
        return onnx.load(str(p))
    except Exception as exc:  # onnx raises DecodeError, ValueError, ... for corrupt files
        raise ModelError(f"{p}: not a readable ONNX model: {exc}") from None


def has_head(model: onnx.ModelProto) -> bool:
    """True when the graph has the prototype head (a ``probs`` output)."""
    return any(o.name == PROBS_NAME for o in model.graph.output)


def strip_head(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` without its prototype head (encoder only)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    keep_nodes = [n for n in graph.node if not n.name.startswith(HEAD_PREFIX)]
    keep_inits = [i for i in graph.initializer if not i.name.startswith(HEAD_PREFIX)]
    keep_outputs = [o for o in graph.output if o.name != PROBS_NAME]
    del graph.node[:]
    graph.node.extend(keep_nodes)
    del graph.initializer[:]
    graph.initializer.extend(keep_inits)
    del graph.output[:]
    graph.output.extend(keep_outputs)
    return out


def attach_head(model: onnx.ModelProto, prototypes: Prototypes) -> onnx.ModelProto:
    """A copy of ``model`` with its head replaced by one built from ``prototypes``.

    The graph must have an ``embedding`` output of the prototypes' dimension.
    """
    base = strip_head(model)
    d = prototypes.vectors.shape[1]
    emb = next((o for o in base.graph.output if o.name == EMBEDDING_NAME), None)
    if emb is None:
        raise ModelError("model has no 'embedding' output: not an stm-live encoder")
    dims = emb.type.tensor_type.shape.dim
    if len(dims) == 4 and dims[1].HasField("dim_value") and dims[1].dim_value != d:
        raise ModelError(f"prototypes have dimension {d}, the encoder's embedding has {dims[1].dim_value}")
    t = prototypes.temperature
    p = prototypes.vectors.astype(np.float64)
    n_classes = prototypes.n_classes
    graph = base.graph
    opset = next((o.version for o in base.opset_import if o.domain in ("", "ai.onnx")), 18)
    names: dict[str, str] = {}
    values: dict[str, np.ndarray] = {}

    def init(key: str, value: np.ndarray) -> None:
        names[key] = HEAD_PREFIX + key
        values[key] = value
        graph.initializer.append(numpy_helper.from_array(value, names[key]))

    def node(op: str, inputs: list[str], output: str, **attrs: Any) -> onnx.NodeProto:
        names.setdefault(output, HEAD_PREFIX + output)
        return helper.make_node(op, [names.get(i, i) for i in inputs], [names[output]], name=HEAD_PREFIX + output,
                                **attrs)

    def reduce(op: str, source: str, output: str, axes: str, axes_input_since: int) -> onnx.NodeProto:
        # the reduction axes became an input (opset 13 for ReduceSum, 18 for ReduceMax)
        if opset >= axes_input_since:
            return node(op, [source, axes], output, keepdims=1)
        return node(op, [source], output, axes=values[axes].tolist(), keepdims=1)

    def softmax_per_class(logits: str, assign: str, prefix: str, output: str) -> list[onnx.NodeProto]:
        # softmax over prototypes, summed per class (see the module description for why spelled out)
        return [
            reduce("ReduceMax", logits, prefix + "max", "axes", 18),
            node("Sub", [logits, prefix + "max"], prefix + "shifted"),
            node("Exp", [prefix + "shifted"], prefix + "exp"),
            node("Conv", [prefix + "exp", assign], prefix + "class_exp"),
            reduce("ReduceSum", prefix + "class_exp", prefix + "total", "axes", 13),
            node("Div", [prefix + "class_exp", prefix + "total"], output),
        ]

    assign = np.zeros((n_classes, len(p), 1, 1), np.float32)
    for m, label in enumerate(prototypes.labels):
        assign[label, m] = 1.0
    init("weight", (2.0 * p / t).astype(np.float32).reshape(len(p), d, 1, 1))
    offsets = 0.0 if prototypes.offsets is None else prototypes.offsets.astype(np.float64)
    init("bias", (-(p**2).sum(axis=1) / t + offsets).astype(np.float32))
    init("assign", assign)
    init("axes", np.array([1], np.int64))
    centring = prototypes.centring
    first = PROBS_NAME if centring is None else "probs_uncentred"
    names[PROBS_NAME] = PROBS_NAME
    graph.node.extend([node("Conv", [EMBEDDING_NAME, "weight", "bias"], "logits"),
                       *softmax_per_class("logits", "assign", "", first)])
    if centring is not None:
        q = centring.centred.astype(np.float64)
        prior = centring.prior_px
        select_background = np.zeros((1, n_classes, 1, 1), np.float32)
        select_background[0, 0] = 1.0
        init("select_background", select_background)
        init("half", np.array(0.5, np.float32))
        init("one", np.array(1.0, np.float32))
        init("prior_px", np.array(prior, np.float32))
        init("prior_sum", (prior * centring.feature_mean.astype(np.float64)).astype(np.float32).reshape(1, d, 1, 1))
        init("spatial_axes", np.array([2, 3], np.int64))
        init("centred_weight", (2.0 * q / t).astype(np.float32).reshape(len(q), d, 1, 1))
        init("centred_bias", (-(q**2).sum(axis=1) / t).astype(np.float32))
        init("centred_assign", np.eye(len(q), dtype=np.float32).reshape(len(q), len(q), 1, 1))
        graph.node.extend(
            [
                # where the first stage found features, and their mean embedding (with the prior)
                node("Conv", ["probs_uncentred", "select_background"], "background"),
                node("Less", ["background", "half"], "is_feature"),
                node("Cast", ["is_feature"], "feature", to=TensorProto.FLOAT),
                reduce("ReduceSum", "feature", "feature_px", "spatial_axes", 13),
                node("Mul", [EMBEDDING_NAME, "feature"], "feature_embedding"),
                reduce("ReduceSum", "feature_embedding", "feature_sum", "spatial_axes", 13),
                node("Add", ["feature_sum", "prior_sum"], "mean_numerator"),
                node("Add", ["feature_px", "prior_px"], "mean_denominator"),
                node("Div", ["mean_numerator", "mean_denominator"], "feature_mean"),
                # class logits with the prototypes at centred + mean: the terms that depend on the class
                node("Conv", [EMBEDDING_NAME, "centred_weight", "centred_bias"], "centred_logits_at_zero"),
                node("Conv", ["feature_mean", "centred_weight"], "mean_shift"),
                node("Sub", ["centred_logits_at_zero", "mean_shift"], "centred_logits"),
                *softmax_per_class("centred_logits", "centred_assign", "centred_", "class_given_feature"),
                node("Sub", ["one", "background"], "feature_probability"),
                node("Mul", ["class_given_feature", "feature_probability"], "class_probs"),
                node("Concat", ["background", "class_probs"], PROBS_NAME, axis=1),
            ]
        )
    graph.output.append(helper.make_tensor_value_info(PROBS_NAME, TensorProto.FLOAT, ["N", n_classes, "H", "W"]))
    return base


#: The metadata that decides what a model does with an image, besides the graph: how the
#: input is prepared, what the outputs are called, how features become detections.
#: Everything else (name, surface, provenance, training record, version, the id itself)
#: describes the model and stays out of its id.
BEHAVIOUR_KEYS = ("format", "classes", "nm_per_px", "embedding_dim", "context_px", "normalisation", "levelling",
                  "prototypes", "detection")
#: Keys of ``detection`` that record how the thresholds were found, not what they are.
_DETECTION_RECORD_KEYS = ("calibration",)
_ID_SCHEME = b"stm-live model id 2\n"


def strip_debug_info(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` without what only debugging needs.

    Removed: every node's ``metadata_props`` (torch's exporter stores the Python
    stack that made each node there, with absolute paths of the machine it ran
    on) and the doc strings of the model, its graph, nodes and functions, and the
    producer's name and version. None of it changes what the graph computes.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.doc_string = ""
    out.producer_name = ""
    out.producer_version = ""
    out.domain = ""
    out.model_version = 0

    def clean_graph(graph: onnx.GraphProto) -> None:
        graph.doc_string = ""
        del graph.metadata_props[:]
        for value in [*graph.input, *graph.output, *graph.value_info]:
            value.doc_string = ""
        for init in graph.initializer:
            init.doc_string = ""
        for node in graph.node:
            clean_node(node)

    def clean_node(node: onnx.NodeProto) -> None:
        node.doc_string = ""
        del node.metadata_props[:]
        for attr in node.attribute:
            attr.doc_string = ""
            if attr.HasField("g"):
                clean_graph(attr.g)
            for sub in attr.graphs:
                clean_graph(sub)

    clean_graph(out.graph)
    for function in out.functions:
        function.doc_string = ""
        del function.metadata_props[:]
        for node in function.node:
            clean_node(node)
    return out


def _behaviour(info: ModelInfo) -> dict[str, Any]:
    """The part of ``info`` that decides behaviour, in its metadata (JSON) form."""
    values = {k[len(_META_PREFIX):]: json.loads(v) for k, v in info.to_metadata().items()}
    out = {k: values[k] for k in BEHAVIOUR_KEYS}
    out["detection"] = {k: v for k, v in out["detection"].items() if k not in _DETECTION_RECORD_KEYS}
    return out


def model_id(model: onnx.ModelProto, info: ModelInfo | None = None) -> str:
    """A short hash of everything that decides what ``model`` does, and of nothing else.

    That is the graph and its weights (the prototype head, feature centring and
    temperature included), without the debugging information of
    :func:`strip_debug_info`, and the metadata of :data:`BEHAVIOUR_KEYS`: classes,
    pitch, embedding size, context, normalisation, levelling, prototypes and
    detection thresholds (not the record of how they were calibrated). Not the
    name, surface, provenance, training record, version or stored id, so that
    re-describing a model, or re-saving it with another stm-live, keeps its id.

    Parameters
    ----------
    model : onnx.ModelProto
        The model; its own ``stm_live.*`` metadata is used unless ``info`` is given
        (a graph without stm-live metadata is hashed alone).
    info : ModelInfo, optional
        The metadata the model will carry.

    Returns
    -------
    str
        16 hexadecimal digits. ``stm-live model-id FILE`` prints a file's stored and
        recomputed id; ``--write`` re-stamps it.
    """
    if info is None and _META_PREFIX + "format" in _meta_dict(model):
        info = read_info(model)
    bare = strip_debug_info(model)
    del bare.metadata_props[:]
    digest = hashlib.sha256(_ID_SCHEME)
    digest.update(bare.SerializeToString(deterministic=True))
    if info is not None:
        digest.update(json.dumps(_behaviour(info), sort_keys=True, separators=(",", ":")).encode())
    return digest.hexdigest()[:16]


def with_info(model: onnx.ModelProto, info: ModelInfo) -> tuple[onnx.ModelProto, ModelInfo]:
    """A copy of ``model`` without debugging information, carrying ``info`` as metadata, with the id filled in."""
    out = strip_debug_info(model)
    out.producer_name = "stm-live"
    out.producer_version = __version__
    info = replace(info, id=model_id(out, info), version=__version__)
    del out.metadata_props[:]
    for key, value in info.to_metadata().items():
        out.metadata_props.add(key=key, value=value)
    return out, info


def save_model(model: onnx.ModelProto, info: ModelInfo, path: str | os.PathLike[str]) -> ModelInfo:
    """Check and write ``model`` with ``info`` to ``path`` atomically; return the info with its id."""
    out, info = with_info(model, info)
    onnx.checker.check_model(out)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.part")
    tmp.write_bytes(out.SerializeToString())
    os.replace(tmp, p)
    return info


def restamp(path: str | os.PathLike[str]) -> tuple[str, str]:
    """Re-save the model file at ``path`` with its id recomputed; return ``(stored, new)`` ids.

    Everything else is kept but the debugging information (:func:`strip_debug_info`)
    and the version, which becomes this stm-live's. The file is rewritten only when
    something changes.
    """
    model = load_onnx(path)
    info = read_info(model, source=str(path))
    out, new = with_info(model, info)
    if out.SerializeToString(deterministic=True) != model.SerializeToString(deterministic=True):
        save_model(model, info, path)
    return info.id, new.id


def class_names_with_background(info: ModelInfo) -> Sequence[str]:
    """``["background", *classes]``: the names of the ``probs`` channels."""
    return ["background", *info.classes]
