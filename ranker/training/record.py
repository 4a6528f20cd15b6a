"""The ``training`` block of a ranker manifest: how a ranker was trained, typed.

``train-ranker`` and ``distill-ranker`` write it (:func:`TrainingRecord.to_dict`) next to
the weights; distillation and the latency benchmark read it back
(:func:`TrainingRecord.from_dict`, :func:`read_training_record`) to rebuild the same lists
with the same user split, so users a ranker was validated on stay unseen.

The JSON keys are those of the artifacts already written: a trained ranker records its
``train_config`` and, for replay lists, the ``index`` version, for cold-start lists
``lists``, ``cutoff``, ``lists_config``, ``windows``, ``image_tower`` and ``text_model``,
then its report's numbers and ``history``; a distilled student records its ``teacher``, the
lists it learnt on (``lists``, and ``index`` or ``cutoff`` and ``text_model``), the teacher's
architecture, its own configs, the teacher's ``train_config`` and its report's numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from newarrivals.indexer.errors import ConfigError
from newarrivals.indexer.evaluation.protocol import parse_cutoff
from newarrivals.ranker.config import RankerTrainConfig
from newarrivals.ranker.crossencoder.model import read_manifest
from newarrivals.ranker.training.cold_start import ColdStartListConfig

__all__ = ["LIST_KINDS", "TrainingRecord", "read_training_record"]

#: The two ways a ranker's lists are built: index replay and cold-start windows.
LIST_KINDS: Final = ("replay", "cold-start")

#: Keys the record reads itself; every other key is one of the report's numbers.
_OWN_KEYS: Final = frozenset(
    {
        "teacher",
        "lists",
        "index",
        "cutoff",
        "lists_config",
        "windows",
        "image_tower",
        "text_model",
        "teacher_architecture",
        "student_config",
        "distill_config",
        "train_config",
        "history",
    }
)


@dataclass(frozen=True)
class TrainingRecord:
    """How a ranker was trained: its lists' recipe, its configs and its report.

    Args:
        lists: One of :data:`LIST_KINDS`.
        train_config: The list recipe and user split (a student records its teacher's).
        report: The training report's numbers (JSON-ready), without the epoch history.
        history: The trained ranker's per-epoch records (a student keeps none here).
        index: The index version replay lists came from.
        cutoff: The evaluation cutoff cold-start lists stop before.
        lists_config: The cold-start windows' recipe.
        windows: Per cold-start window: its start, pool size, users and lists.
        image_tower: The image tower cold-start lists were retrieved with (``None``: none).
        text_model: The text model of cold-start lists (``None``: the bundled MiniLM).
        teacher: For a distilled student, the teacher's directory.
        teacher_architecture: For a student, the teacher's architecture.
        student_config: For a student, its :class:`StudentConfig` as a dict.
        distill_config: For a student, its :class:`DistillConfig` as a dict.

    Example:
        >>> record = TrainingRecord(lists="replay", train_config=RankerTrainConfig(), index="v1")
        >>> TrainingRecord.from_dict(record.to_dict()).index
        'v1'
    """

    lists: str = "replay"
    train_config: RankerTrainConfig = field(default_factory=RankerTrainConfig)
    report: Mapping[str, Any] = field(default_factory=dict)
    history: list[Any] | None = None
    index: str | None = None
    cutoff: datetime | None = None
    lists_config: ColdStartListConfig | None = None
    windows: list[Any] | None = None
    image_tower: str | None = None
    text_model: str | None = None
    teacher: str | None = None
    teacher_architecture: Mapping[str, Any] | None = None
    student_config: Mapping[str, Any] | None = None
    distill_config: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.lists not in LIST_KINDS:
            raise ConfigError(f"lists must be one of {list(LIST_KINDS)}, got {self.lists!r}.")

    @property
    def cold_start(self) -> bool:
        """Whether the lists are cold-start windows (else index replay)."""
        return self.lists == "cold-start"

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``training`` block (JSON-ready)."""
        out: dict[str, Any] = {}
        if self.teacher is not None:
            out["teacher"] = self.teacher
        # A trained ranker on replay lists has always left ``lists`` out (replay is the
        # default when reading); a student always names its lists.
        if self.cold_start or self.teacher is not None:
            out["lists"] = self.lists
        if self.index is not None:
            out["index"] = self.index
        if self.cutoff is not None:
            out["cutoff"] = self.cutoff.isoformat()
        if self.lists_config is not None:
            out["lists_config"] = self.lists_config.to_dict()
        if self.windows is not None:
            out["windows"] = self.windows
        if self.lists_config is not None:
            out["image_tower"] = self.image_tower
        if self.cold_start:
            out["text_model"] = self.text_model
        for name in ("teacher_architecture", "student_config", "distill_config"):
            value = getattr(self, name)
            if value is not None:
                out[name] = dict(value)
        out["train_config"] = self.train_config.to_dict()
        out.update(self.report)
        if self.history is not None:
            out["history"] = self.history
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingRecord:
        """Read a manifest's ``training`` block (missing keys take their defaults)."""
        cutoff = data.get("cutoff")
        lists_config = data.get("lists_config")
        tower, text = data.get("image_tower"), data.get("text_model")
        return cls(
            lists=str(data.get("lists", "replay")),
            train_config=RankerTrainConfig.from_dict(data.get("train_config", {})),
            report={k: v for k, v in data.items() if k not in _OWN_KEYS},
            history=data.get("history"),
            index=None if data.get("index") is None else str(data["index"]),
            cutoff=None if cutoff is None else parse_cutoff(str(cutoff)),
            lists_config=None if lists_config is None else ColdStartListConfig(**lists_config),
            windows=data.get("windows"),
            image_tower=None if tower is None else str(tower),
            text_model=None if text is None else str(text),
            teacher=None if data.get("teacher") is None else str(data["teacher"]),
            teacher_architecture=data.get("teacher_architecture"),
            student_config=data.get("student_config"),
            distill_config=data.get("distill_config"),
        )


def read_training_record(directory: Path) -> TrainingRecord:
    """The training record of the ranker artifact in ``directory`` (defaults if it has none).

    Raises:
        ConfigError: when ``directory`` holds no ranker manifest.
    """
    return TrainingRecord.from_dict(read_manifest(directory).get("training", {}))
