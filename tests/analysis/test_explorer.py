"""Cluster explorer data: clustering with skeletons, per-cluster errors against least squares,
points frame flags and cluster spectra against numpy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.explorer import cluster_view, points_frame, spectra_frame


@pytest.fixture(scope="module")
def W():
    rng = np.random.default_rng(1)
    return rng.normal(size=(60, 16))


def test_cluster_view_errors_match_least_squares(W):
    view = cluster_view(W, 3, 5, ["id", "centroid", "random"], seed=0)
    sizes = np.bincount(view.labels, minlength=3)
    assert view.sizes["rows"].tolist() == sizes.tolist() and sizes.min() >= 5
    for selection, skel in view.skeletons.items():
        assert len(skel) == 3 and all(len(s) == 5 for s in skel)
        for c in range(3):
            assert (view.labels[skel[c]] == c).all()
            Wc, J = W[view.labels == c], W[skel[c]]
            X = np.linalg.lstsq(J.T, Wc.T, rcond=None)[0].T
            expected = np.linalg.norm(Wc - X @ J) / np.linalg.norm(Wc)
            row = view.errors[(view.errors["cluster"] == c) & (view.errors["selection"] == selection)]
            assert np.isclose(row["rel_fro_error"].item(), expected, rtol=1e-8)
            s = np.linalg.svd(Wc, compute_uv=False)
            assert np.isclose(row["svd_same_r"].item(), np.sqrt(np.sum(s[5:] ** 2) / np.sum(s**2)))


def test_cluster_view_rejects_infeasible(W):
    with pytest.raises(ValueError, match="exceeds"):
        cluster_view(W, 20, 5)


def test_points_frame_marks_skeleton_rows(W):
    view = cluster_view(W, 2, 4, ["id"], seed=0)
    xy = pd.DataFrame({"row": np.arange(60), "x": 0.0, "y": 0.0})
    pts = points_frame(xy, view)
    assert pts["cluster"].tolist() == [str(c) for c in view.labels]
    assert sorted(pts.index[pts["skeleton_id"]]) == sorted(np.concatenate(view.skeletons["id"]))


def test_spectra_frame_matches_numpy_on_the_given_clusters(W):
    labels = np.arange(60) % 3  # any clustering: the frame never clusters itself
    df = spectra_frame(W, labels)
    layer = df[df["part"] == "layer"]
    s = np.linalg.svd(W, compute_uv=False)
    assert np.allclose(layer["sigma"], s) and np.isclose(layer["relative"].iloc[0], 1.0)
    assert set(df["part"]) == {"layer", "cluster 0", "cluster 1", "cluster 2"}
    for c in range(3):
        part = df[df["part"] == f"cluster {c}"]
        assert (part["rows"] == 20).all()
        assert np.allclose(part["sigma"], np.linalg.svd(W[labels == c], compute_uv=False))
        assert np.allclose(part["relative"], part["sigma"] / s[0])
    assert len(spectra_frame(W)) == len(spectra_frame(W, np.zeros(60, int))) == 16  # the layer only
    with pytest.raises(ValueError, match="one cluster id"):
        spectra_frame(W, labels[:10])
