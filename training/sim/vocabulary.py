"""Open-vocabulary class list of the indoor simulator: shape recipes, synonyms and test splits.

Splits follow Semantic Abstraction's test sets (Ha & Song, CoRL 2022, §4 and App. 6.4): ``train``
(training classes and shapes, queried by class name), ``novel_synonym`` (training classes queried by
a synonym), ``novel_class`` (adds the held-out classes, at least one per scene) and ``novel_shape``
(adds classes whose shape recipe is held out; a split SemAbs does not have, for shape
generalisation of the 3D network).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from training.sim.shapes import SHAPES

__all__ = ["ClassSpec", "Vocabulary", "SPLITS", "STRUCTURAL"]

SPLITS = ("train", "novel_class", "novel_synonym", "novel_shape")
#: Categories of the room structure (always present, never VOOL targets or references).
STRUCTURAL = ("floor", "wall")
_PLACES = ("table", "floor", "receptacle", "support", "table_furniture")


@dataclass(frozen=True)
class ClassSpec:
    """One class of the vocabulary.

    Attributes:
        name: canonical class name. shape: recipe name in :data:`shapes.SHAPES`.
        scale: (lo, hi) overall size range, metres. place: one of table, floor, receptacle,
        support, table_furniture. synonyms: alternative names. held_out: novel-class only.
    """

    name: str
    shape: str
    scale: tuple[float, float]
    place: str
    synonyms: tuple[str, ...] = ()
    held_out: bool = False


@dataclass
class Vocabulary:
    """Classes of a config's ``classes`` / ``held_out_shapes`` sections.

    Raises:
        ValueError: unknown shape recipe or placement, bad scale range, or no table class.
    """

    classes: dict[str, ClassSpec]
    held_out_shapes: tuple[str, ...] = ()
    _by_label: dict[str, set[str]] = field(default_factory=dict, repr=False)

    @classmethod
    def from_config(cls, cfg: dict) -> "Vocabulary":
        """Build from the indoor config dict (see ``training/config/sim_indoor.yaml``)."""
        classes = {}
        for name, spec in (cfg.get("classes") or {}).items():
            shape = spec.get("shape")
            if shape not in SHAPES:
                raise ValueError(f"class {name!r}: unknown shape {shape!r}; have {sorted(SHAPES)}")
            place = spec.get("place", "table")
            if place not in _PLACES:
                raise ValueError(f"class {name!r}: place must be one of {_PLACES}, got {place!r}")
            lo, hi = (float(v) for v in spec.get("scale", (0.1, 0.2)))
            if not 0 < lo <= hi:
                raise ValueError(f"class {name!r}: scale must be 0 < lo <= hi, got {(lo, hi)}")
            classes[name] = ClassSpec(name, shape, (lo, hi), place,
                                      tuple(spec.get("synonyms", ()) or ()),
                                      bool(spec.get("held_out", False)))
        if not any(c.place == "table_furniture" for c in classes.values()):
            raise ValueError("the vocabulary needs a class with place: table_furniture")
        held = tuple(cfg.get("held_out_shapes", ()) or ())
        vocab = cls(classes, held)
        for c in classes.values():
            for text in (c.name, *c.synonyms):
                vocab._by_label.setdefault(text, set()).add(c.name)
        for s in STRUCTURAL:
            vocab._by_label.setdefault(s, set()).add(s)
        return vocab

    def categories_of(self, label: str) -> set[str]:
        """Canonical classes a query text names (a synonym may name several, e.g. ``ball``)."""
        return set(self._by_label.get(label, {label}))

    def pool(self, split: str) -> tuple[list[ClassSpec], list[ClassSpec]]:
        """``(pool, required)``: classes a scene of ``split`` draws from, and the novel ones of
        which at least one must appear (empty for train / novel_synonym).

        Raises:
            ValueError: unknown split.
        """
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; have {SPLITS}")
        train = [c for c in self.classes.values()
                 if not c.held_out and c.shape not in self.held_out_shapes]
        if split == "novel_class":
            novel = [c for c in self.classes.values()
                     if c.held_out and c.shape not in self.held_out_shapes]
        elif split == "novel_shape":
            novel = [c for c in self.classes.values()
                     if not c.held_out and c.shape in self.held_out_shapes]
        else:
            novel = []
        return train + novel, novel

    def label_for(self, spec: ClassSpec, split: str, rng) -> str:
        """Query text of an object: a random synonym in ``novel_synonym``, else the class name."""
        if split == "novel_synonym" and spec.synonyms:
            return str(spec.synonyms[rng.integers(len(spec.synonyms))])
        return spec.name
