"""Occ3D-nuScenes label space and the frozen evaluation class lists (``config/ago_classes.yaml``).

Source: Occ3D README / ``occ_metrics.py`` (labels 0-16 in nuScenes-lidarseg order, 17 = free;
Occ3D README and ``Metric_mIoU``), AGO Table 1 (mIoU*), AGO §4.1 / Table 2 (open-world split,
reconstructed from the published means: design choice), object / rare classes (design choice, docs/visa.md §2).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from occ_audit_ros import paths

__all__ = ["ClassConfig", "load_class_config", "OCC3D_CLASSES", "FREE_LABEL", "IGNORE_LABEL"]

#: Occ3D semantic classes 0..16 (nuScenes-lidarseg order).
OCC3D_CLASSES = (
    "others", "barrier", "bicycle", "bus", "car", "construction_vehicle", "motorcycle",
    "pedestrian", "traffic_cone", "trailer", "truck", "driveable_surface", "other_flat",
    "sidewalk", "terrain", "manmade", "vegetation",
)
#: Occ3D label of free space.
FREE_LABEL = 17
#: Label of unobserved voxels in our own GT files (never evaluated, never supervised).
IGNORE_LABEL = 255


@dataclass(frozen=True)
class ClassConfig:
    """Class lists of the Occ3D evaluation and the AGO open-world protocol.

    Attributes:
        classes: the 17 semantic class names, index = Occ3D label.
        free_label: label of free space (17).
        ignore_label: label never evaluated (255).
        miou_star: class ids of mIoU* (15 classes; others, other_flat excluded).
        object_classes: ids of the object ("thing") classes.
        rare_classes: ids of the rare object classes (frozen list; see its source string).
        rare_source: where the rare list came from.
        ow_known: ids of the open-world known (fine, pre-training) classes.
        ow_super: supercategory name -> ids of its member classes.
        ow_unknown: ids of fully unknown classes.
        ow_evaluated: ids evaluated in the open-world tables.
        phrases: class name -> sub-category phrases.
    """

    classes: tuple[str, ...]
    free_label: int
    ignore_label: int
    miou_star: tuple[int, ...]
    object_classes: tuple[int, ...]
    rare_classes: tuple[int, ...]
    rare_source: str
    ow_known: tuple[int, ...]
    ow_super: dict
    ow_unknown: tuple[int, ...]
    ow_evaluated: tuple[int, ...]
    phrases: dict

    def ids(self, names) -> tuple[int, ...]:
        """Class ids of class names.

        Raises:
            ValueError: for a name not in :attr:`classes`.
        """
        out = []
        for n in names:
            if n not in self.classes:
                raise ValueError(f"unknown class {n!r}; classes are {list(self.classes)}")
            out.append(self.classes.index(n))
        return tuple(out)

    @property
    def all_classes(self) -> tuple[int, ...]:
        """Ids 0..16 (the 17 classes of Occ3D mIoU)."""
        return tuple(range(len(self.classes)))

    @property
    def ow_zero_shot_known(self) -> tuple[int, ...]:
        """Known classes after splitting supercategories: the fine known classes only (green)."""
        return self.ow_known

    @property
    def ow_split_classes(self) -> tuple[int, ...]:
        """Members of supercategories (orange: seen as a supercategory only)."""
        return tuple(sorted(i for v in self.ow_super.values() for i in v))


def load_class_config(path=None) -> ClassConfig:
    """Read ``config/ago_classes.yaml`` (or ``path``).

    Raises:
        FileNotFoundError: missing file.
        ValueError: a list names an unknown class, or the class list is not Occ3D's.
    """
    path = Path(path) if path is not None else paths.resource("config/ago_classes.yaml")
    if not path.is_file():
        raise FileNotFoundError(f"class config {path} not found")
    cfg = yaml.safe_load(path.read_text())
    classes = tuple(cfg["classes"])
    if classes != OCC3D_CLASSES:
        raise ValueError(f"{path}: classes must be Occ3D's 17 in lidarseg order, got {classes}")
    tmp = ClassConfig(classes, int(cfg["free_label"]), int(cfg["ignore_label"]), (), (), (), "",
                      (), {}, (), (), {})
    ow = cfg["open_world"]
    excl = set(tmp.ids(cfg["miou_star_exclude"]))
    phrases = {k: list(v) for k, v in cfg["phrases"].items()}
    tmp.ids(phrases)
    return ClassConfig(
        classes=classes,
        free_label=tmp.free_label,
        ignore_label=tmp.ignore_label,
        miou_star=tuple(i for i in range(len(classes)) if i not in excl),
        object_classes=tmp.ids(cfg["object_classes"]),
        rare_classes=tmp.ids(cfg["rare_classes"]),
        rare_source=str(cfg.get("rare_classes_source", "")),
        ow_known=tmp.ids(ow["known"]),
        ow_super={k: tmp.ids(v) for k, v in ow["supercategories"].items()},
        ow_unknown=tmp.ids(ow["unknown"]),
        ow_evaluated=tmp.ids(ow["evaluated"]),
        phrases=phrases,
    )
