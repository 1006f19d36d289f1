"""VISA propagation along tracks: real Lyft tables (instance tokens, prev/next) and weights."""

import copy

import pytest

from occ_audit_ros import paths
from training.visa.auditors import AuditRequest, SimulatedAuditor
from training.visa.propagation import build_tracks, frame_weight, propagate, reliability_weight
from training.visa.schema import make_record
from training.visa.taxonomy import category_to_class


@pytest.fixture(scope="module")
def lyft():
    """The real Lyft Level 5 table slice (nuScenes format) through nuscenes-devkit."""
    from nuscenes.nuscenes import NuScenes

    root = paths.shared_dir() / "data" / "lyft-mmdet3d-tables" / "v1.01-train"
    return NuScenes(version="v1.01-train", dataroot=str(root), verbose=False)


def _audits_for(nusc, seed=0, accuracy=1.0):
    aud = SimulatedAuditor(accuracy=accuracy, seed=seed, reliability_correlation=0.9)
    out = {}
    for inst in nusc.instance:
        cls = category_to_class(nusc.get("category", inst["category_token"])["name"])
        if cls is None:
            continue
        ans = aud.audit(AuditRequest(inst["token"], gt_class=cls))
        out[inst["token"]] = make_record(ans, inst["token"], aud.describe(), gt={"category": cls, "class": cls})
    return out


def test_real_lyft_tracks_by_instance_token(lyft):
    anns = lyft.sample_annotation
    tracks = build_tracks(anns)
    assert set(tracks) == {i["token"] for i in lyft.instance}
    table_tokens = {a["token"] for a in anns}
    for inst in lyft.instance:
        t = tracks[inst["token"]]
        mine = [a for a in anns if a["instance_token"] == inst["token"]]
        assert sorted(t.annotation_tokens) == sorted(a["token"] for a in mine)
        # The slice holds 1 of nbr_annotations (>1) per instance: every link leaves the table.
        expected_dangling = sum(bool(a[k]) and a[k] not in table_tokens for a in mine for k in ("prev", "next"))
        assert t.dangling == expected_dangling and inst["nbr_annotations"] > len(mine)
    assert sum(t.dangling for t in tracks.values()) == 8


def test_propagation_copies_the_instance_audit_with_frame_weights(lyft):
    audits = _audits_for(lyft)
    anns = lyft.sample_annotation
    assert len(audits) == len({a["instance_token"] for a in anns})  # all Lyft classes are in K_obj
    n_vox = {a["token"]: n for a, n in zip(anns, (0, 5, 20, 60))}
    frames = propagate(audits, anns, n_vox)
    assert len(frames) == len(anns)
    for f in frames:
        rec = audits[f.instance_token]
        assert f.audit is rec and f.sample_token == lyft.sample[0]["token"]
        rho = min(1.0, n_vox[f.annotation_token] / 20.0)  # no visibility in the Lyft slice -> 1
        assert f.rho == pytest.approx(rho)
        q, r = rec["confidence"], rec["reliability"]
        assert f.weight == pytest.approx(q * r * (q >= 0.5) * (r >= 0.5) * rho)


def _chain(anns, n):
    """n-frame track built from a real Lyft row: tokens a0..a{n-1} linked prev/next."""
    base = anns[0]
    rows = []
    for k in range(n):
        r = copy.deepcopy(base)
        r.update(token=f"a{k}", prev=f"a{k-1}" if k else "", next=f"a{k+1}" if k < n - 1 else "",
                 sample_token=f"s{k}", visibility_token=str(1 + k % 4))
        rows.append(r)
    return rows


def test_track_order_segments_and_bad_links(lyft):
    rows = _chain(lyft.sample_annotation, 5)
    t = build_tracks(reversed(rows))[rows[0]["instance_token"]]
    assert t.segments == [["a0", "a1", "a2", "a3", "a4"]] and t.dangling == 0
    broken = [r for r in rows if r["token"] != "a2"]  # a missing middle annotation
    t = build_tracks(broken)[rows[0]["instance_token"]]
    assert t.segments == [["a0", "a1"], ["a3", "a4"]] and t.dangling == 2
    audits = _audits_for(lyft)
    frames = propagate(audits, rows, {f"a{k}": 40 for k in range(5)})
    assert [f.annotation_token for f in frames] == ["a0", "a1", "a2", "a3", "a4"]
    assert [f.rho for f in frames] == [0.25, 0.5, 0.75, 1.0, 0.25]  # visibility bins 1,2,3,4,1
    bad = copy.deepcopy(rows)
    bad[1]["instance_token"] = "other"
    with pytest.raises(ValueError, match="another instance"):
        build_tracks(bad)
    cyc = copy.deepcopy(rows)
    cyc[4]["next"], cyc[0]["prev"] = "a0", "a4"
    with pytest.raises(ValueError, match="cycle"):
        build_tracks(cyc)


def test_weights_hand_values():
    audit = {"confidence": 0.8, "reliability": 0.6, "class_hypothesis": "truck",
             "confusions": [{"class": "bus", "score": 0.1}]}
    assert reliability_weight(audit) == pytest.approx(0.48)
    assert reliability_weight(dict(audit, reliability=0.49)) == 0.0
    assert reliability_weight(dict(audit, confidence=0.4)) == 0.0
    assert reliability_weight(audit, agreement_downweight=True, gt_class="car") == pytest.approx(0.24)
    assert reliability_weight(audit, agreement_downweight=True, gt_class="bus") == pytest.approx(0.48)
    assert frame_weight(10, 3) == pytest.approx(0.375) and frame_weight(100, None) == 1.0
    with pytest.raises(ValueError):
        frame_weight(5, 0)
