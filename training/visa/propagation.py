"""Audit propagation along tracks by instance token, with per-frame weights (docs/visa.md §5, §6).

Class identity is constant along a track, so the one audit of an ``instance_token`` is copied to
every ``sample_annotation`` of it; the per-frame weight carries the geometry:
``ρ_{i,t} = min(1, |V_{i,t}| / 20) · vis_w(bin_{i,t})`` and the reliability weight of the audit
``w_i = q_i · r_i · 1[q_i ≥ τ_q] · 1[r_i ≥ τ_r]`` (optionally halved when the hypothesis is
neither the GT class nor among the confusions), giving ``w_{i,t} = w_i · ρ_{i,t}``.

Tracks are rebuilt from the ``prev``/``next`` links of ``sample_annotation`` rows. A link to a
token outside the given table (a table slice, as in the MMDetection3D Lyft fixture) ends the
chain and is counted as dangling; links that jump to another instance or form a cycle are errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from training.visa.crops import VIS_WEIGHT


@dataclass
class Track:
    """The annotations of one instance in time order.

    Attributes:
        instance_token: the instance.
        segments: lists of ``sample_annotation`` tokens, each in ``prev -> next`` order; more than
            one segment when a link inside the instance is missing from the table.
        dangling: links (prev or next) that point to annotations absent from the table.
    """

    instance_token: str
    segments: list[list[str]] = field(default_factory=list)
    dangling: int = 0

    @property
    def annotation_tokens(self) -> list[str]:
        """All annotation tokens, segment by segment."""
        return [t for seg in self.segments for t in seg]


def build_tracks(annotations) -> dict[str, Track]:
    """Tracks per instance from ``sample_annotation`` rows.

    Args:
        annotations: iterable of dicts with ``token``, ``instance_token``, ``prev``, ``next``
            (``""`` = none), e.g. ``NuScenes.sample_annotation``.

    Returns:
        instance token -> :class:`Track`.

    Raises:
        ValueError: duplicate annotation tokens, a link into another instance, a link whose
            reverse link disagrees, or a cycle.
    """
    by_token: dict[str, dict] = {}
    for a in annotations:
        if a["token"] in by_token:
            raise ValueError(f"duplicate sample_annotation token {a['token']}")
        by_token[a["token"]] = a
    per_instance: dict[str, list[dict]] = {}
    for a in by_token.values():
        per_instance.setdefault(a["instance_token"], []).append(a)
    tracks = {}
    for inst, anns in per_instance.items():
        track = Track(inst)
        for a in anns:
            for link, back in (("prev", "next"), ("next", "prev")):
                other = a[link]
                if not other:
                    continue
                if other not in by_token:
                    track.dangling += 1
                    continue
                o = by_token[other]
                if o["instance_token"] != inst:
                    raise ValueError(f"annotation {a['token']} {link} -> {other} of another instance")
                if o[back] != a["token"]:
                    raise ValueError(f"annotation {a['token']} {link} -> {other}, whose {back} disagrees")
        heads = [a for a in anns if not a["prev"] or a["prev"] not in by_token]
        seen: set[str] = set()
        for head in sorted(heads, key=lambda a: a["token"]):
            seg, cur = [], head
            while True:
                seg.append(cur["token"])
                seen.add(cur["token"])
                nxt = cur["next"]
                if not nxt or nxt not in by_token:
                    break
                if nxt in seen:
                    raise ValueError(f"cycle in the track of instance {inst} at {nxt}")
                cur = by_token[nxt]
            track.segments.append(seg)
        if len(seen) != len(anns):
            raise ValueError(f"cycle in the track of instance {inst} (annotations with no head)")
        tracks[inst] = track
    return tracks


def frame_weight(n_voxels: int, visibility_bin: int | None, full_voxels: int = 20) -> float:
    """ρ_{i,t} = min(1, |V_{i,t}| / 20) · vis_w(bin) (docs/visa.md §5); bin ``None`` -> vis_w = 1.

    Raises:
        ValueError: negative voxel count or a bin outside {1, 2, 3, 4, None}.
    """
    if n_voxels < 0:
        raise ValueError(f"n_voxels must be >= 0, got {n_voxels}")
    if visibility_bin not in VIS_WEIGHT:
        raise ValueError(f"visibility_bin must be 1-4 or None, got {visibility_bin!r}")
    return min(1.0, n_voxels / float(full_voxels)) * VIS_WEIGHT[visibility_bin]


def reliability_weight(audit: dict, tau_q: float = 0.5, tau_r: float = 0.5,
                       agreement_downweight: bool = False, gt_class: str | None = None) -> float:
    """w_i = q · r · 1[q ≥ τ_q] · 1[r ≥ τ_r] (docs/visa.md §6), halved when ``agreement_downweight``
    and the hypothesis is neither ``gt_class`` nor among the confusions."""
    q, r = float(audit["confidence"]), float(audit["reliability"])
    w = q * r if (q >= tau_q and r >= tau_r) else 0.0
    if agreement_downweight and gt_class is not None:
        if audit["class_hypothesis"] != gt_class and gt_class not in {c["class"] for c in audit["confusions"]}:
            w *= 0.5
    return w


@dataclass
class FrameAudit:
    """One audit copied to one annotation (frame) of its track.

    Attributes:
        annotation_token, instance_token, sample_token: where it applies.
        audit: the ``visa-audit/1`` record of the instance.
        rho: per-frame geometric weight ρ_{i,t}.
        weight: w_{i,t} = w_i · ρ_{i,t}.
    """

    annotation_token: str
    instance_token: str
    sample_token: str
    audit: dict
    rho: float
    weight: float


def propagate(audits: dict[str, dict], annotations, n_voxels: dict[str, int],
              tau_q: float = 0.5, tau_r: float = 0.5, agreement_downweight: bool = False,
              full_voxels: int = 20) -> list[FrameAudit]:
    """Copy each instance's audit to all annotations of its track, with w_{i,t}.

    Args:
        audits: instance token -> ``visa-audit/1`` record (instances without one are skipped).
        annotations: ``sample_annotation`` rows (``token``, ``instance_token``, ``sample_token``,
            ``prev``, ``next``, optional ``visibility_bin`` 1–4 or ``visibility_token`` "1"–"4").
        n_voxels: annotation token -> |V_{i,t}| from grounding (missing -> 0).

    Returns:
        One :class:`FrameAudit` per audited annotation, in track order.
    """
    rows = list(annotations)
    by_token = {a["token"]: a for a in rows}
    out = []
    for inst, track in build_tracks(rows).items():
        rec = audits.get(inst)
        if rec is None:
            continue
        w = reliability_weight(rec, tau_q, tau_r, agreement_downweight, (rec.get("gt") or {}).get("class"))
        for tok in track.annotation_tokens:
            a = by_token[tok]
            vis = a.get("visibility_bin")
            if vis is None and str(a.get("visibility_token", "")) in ("1", "2", "3", "4"):
                vis = int(a["visibility_token"])
            rho = frame_weight(int(n_voxels.get(tok, 0)), vis, full_voxels)
            out.append(FrameAudit(tok, inst, a["sample_token"], rec, rho, w * rho))
    return out
