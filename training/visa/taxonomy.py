"""Class sets, parent groups, attributes and the class->attribute matrix of VISA.

Design choices (docs/visa.md §2: class sets, parents; §4: attribute list); every choice here is
a design choice (DC), not from the paper. Class indices follow nuScenes-lidarseg / Occ3D order
(Occ3D README): the 10 audited "thing" classes K_obj are lidarseg ids 1..10.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

#: Occ3D-nuScenes labels in nuScenes-lidarseg order (index = class id; 17 = free).
OCC3D_CLASSES: tuple[str, ...] = (
    "others", "barrier", "bicycle", "bus", "car", "construction_vehicle", "motorcycle",
    "pedestrian", "traffic_cone", "trailer", "truck", "driveable_surface", "other_flat",
    "sidewalk", "terrain", "manmade", "vegetation", "free",
)

#: K_obj: the audited thing classes, in lidarseg order (docs/visa.md §2).
K_OBJ: tuple[str, ...] = (
    "barrier", "bicycle", "bus", "car", "construction_vehicle", "motorcycle", "pedestrian",
    "traffic_cone", "trailer", "truck",
)

#: Index of each K_obj class in OCC3D_CLASSES (lidarseg ids 1..10).
K_OBJ_OCC3D_INDEX: tuple[int, ...] = tuple(OCC3D_CLASSES.index(c) for c in K_OBJ)

#: Parent groups over K_obj (docs/visa.md §2).
PARENTS: dict[str, tuple[str, ...]] = {
    "vehicle": ("car", "truck", "bus", "trailer", "construction_vehicle"),
    "two_wheeler": ("bicycle", "motorcycle"),
    "human": ("pedestrian",),
    "static_obstacle": ("barrier", "traffic_cone"),
}

#: The A = 10 binary visual factors of the audit (docs/visa.md §4), in this order.
ATTRIBUTES: tuple[str, ...] = (
    "large_vehicle", "two_wheeler", "person", "static_obstacle", "enclosed_passenger_cabin",
    "cargo_bed_or_box", "towed_unit", "construction_equipment", "tall_over_2p5m", "wheeled",
)

#: Class -> attributes that hold for a typical instance (fixed by hand from the nuScenes class
#: definitions; docs/visa.md §7 "M fixed by hand"). The truck row equals the example audit of §4.
CLASS_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "barrier": ("static_obstacle",),
    "bicycle": ("two_wheeler", "wheeled"),
    "bus": ("large_vehicle", "enclosed_passenger_cabin", "tall_over_2p5m", "wheeled"),
    "car": ("enclosed_passenger_cabin", "wheeled"),
    "construction_vehicle": ("large_vehicle", "construction_equipment", "tall_over_2p5m", "wheeled"),
    "motorcycle": ("two_wheeler", "wheeled"),
    "pedestrian": ("person",),
    "traffic_cone": ("static_obstacle",),
    "trailer": ("large_vehicle", "cargo_bed_or_box", "towed_unit", "tall_over_2p5m", "wheeled"),
    "truck": ("large_vehicle", "enclosed_passenger_cabin", "cargo_bed_or_box", "tall_over_2p5m",
              "wheeled"),
}

#: One-line class definitions used in the VLM prompt (paraphrased from the nuScenes annotator
#: instructions for the detection classes).
CLASS_DEFINITIONS: dict[str, str] = {
    "barrier": "temporary road barrier or jersey barrier that redirects traffic",
    "bicycle": "human-powered two-wheeler, with or without a rider",
    "bus": "rigid or bendy bus for passengers",
    "car": "passenger car, van, SUV or pickup-sized personal vehicle",
    "construction_vehicle": "vehicle for construction work: excavator, crane, forklift, dump truck",
    "motorcycle": "motorised two-wheeler: motorcycle, scooter, moped",
    "pedestrian": "person walking, standing or sitting (not riding)",
    "traffic_cone": "traffic cone or pole-like temporary marker",
    "trailer": "unpowered towed unit: semi-trailer, container or boat trailer",
    "truck": "vehicle mainly for cargo: pickup with cargo bed, box truck, lorry, tractor unit",
}

#: Full nuScenes category names (and the 10 detection names) -> K_obj class; ``None`` for
#: categories outside K_obj (animals, debris, strollers, wheelchairs, ...).
_NUSCENES_CATEGORY_TO_CLASS: dict[str, str] = {
    "movable_object.barrier": "barrier",
    "vehicle.bicycle": "bicycle",
    "vehicle.bus.bendy": "bus",
    "vehicle.bus.rigid": "bus",
    "vehicle.car": "car",
    "vehicle.construction": "construction_vehicle",
    "vehicle.motorcycle": "motorcycle",
    "human.pedestrian.adult": "pedestrian",
    "human.pedestrian.child": "pedestrian",
    "human.pedestrian.construction_worker": "pedestrian",
    "human.pedestrian.police_officer": "pedestrian",
    "movable_object.trafficcone": "traffic_cone",
    "vehicle.trailer": "trailer",
    "vehicle.truck": "truck",
}


def category_to_class(category: str) -> str | None:
    """K_obj class of a nuScenes category name or detection class name.

    Args:
        category: full nuScenes name (``"vehicle.bus.rigid"``) or detection name (``"bus"``).

    Returns:
        The K_obj class name, or ``None`` for categories outside K_obj (docs/visa.md §5: GT class
        "mapped from the nuScenes category").
    """
    if category in K_OBJ:
        return category
    return _NUSCENES_CATEGORY_TO_CLASS.get(category)


def parent_of(cls: str) -> str:
    """Parent group of a K_obj class.

    Raises:
        ValueError: for a class outside K_obj.
    """
    for parent, members in PARENTS.items():
        if cls in members:
            return parent
    raise ValueError(f"{cls!r} is not in K_obj {K_OBJ}")


@lru_cache(maxsize=1)
def attribute_matrix() -> np.ndarray:
    """M ∈ {0,1}^{|K_obj| × A} (docs/visa.md §7), rows in K_OBJ order, columns in ATTRIBUTES order.

    Returns:
        (10, 10) float32 0/1 matrix (cached, read-only).
    """
    M = np.zeros((len(K_OBJ), len(ATTRIBUTES)), dtype=np.float32)
    for i, cls in enumerate(K_OBJ):
        for a in CLASS_ATTRIBUTES[cls]:
            M[i, ATTRIBUTES.index(a)] = 1.0
    M.flags.writeable = False  # cached: shared by all callers
    return M


@lru_cache(maxsize=1)
def parent_matrix() -> np.ndarray:
    """G ∈ {0,1}^{|K_obj| × n_parents}: G[k, g] = 1 when class k belongs to parent g.

    Returns:
        (10, 4) float32, columns in ``PARENTS`` order (cached, read-only).
    """
    G = np.zeros((len(K_OBJ), len(PARENTS)), dtype=np.float32)
    for g, members in enumerate(PARENTS.values()):
        for cls in members:
            G[K_OBJ.index(cls), g] = 1.0
    G.flags.writeable = False  # cached: shared by all callers
    return G
