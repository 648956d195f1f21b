"""UV unwrap of a real DMTet head: every face mapped into [0, 1], charts that do not overlap,
few charts thanks to charting on a smoothed copy, and per-corner UVs that round-trip."""

import numpy as np

from engine.texture import UVLayout, face_index_map, unwrap_mesh


def uv_area(layout: UVLayout) -> np.ndarray:
    c = layout.corner_uvs().astype(np.float64)
    e1, e2 = c[:, 1] - c[:, 0], c[:, 2] - c[:, 0]
    return 0.5 * np.abs(e1[:, 0] * e2[:, 1] - e1[:, 1] * e2[:, 0])


def test_every_face_has_uvs_in_the_unit_square(head32, head32_layout):
    verts, faces = head32
    lay = head32_layout
    assert lay.uv_faces.shape == tuple(faces.shape)
    assert lay.uv.dtype == np.float32 and lay.uv_faces.dtype == np.int32 and lay.vmapping.dtype == np.int32
    assert (lay.uv >= 0).all() and (lay.uv <= 1).all()
    # Each UV corner belongs to the mesh corner it replaces: the UVs apply to the real mesh.
    np.testing.assert_array_equal(lay.vmapping[lay.uv_faces], faces.numpy())
    assert lay.corner_uvs().shape == (len(faces), 3, 2)
    assert (uv_area(lay) > 0).mean() > 0.999  # no face collapsed to a point or a line


def test_charts_do_not_overlap(head32_layout):
    """Rasterise the atlas: if no two charts overlap, the covered texels match the summed UV area."""
    size = 512
    ids = face_index_map(head32_layout, size)
    covered = (ids >= 0).sum()
    expected = uv_area(head32_layout).sum() * size * size
    overlap = 1.0 - covered / expected
    assert abs(overlap) < 0.03, f"covered {covered} texels of {expected:.0f} expected: overlap {overlap:.3f}"
    # Faces large enough to own a texel centre are all seen: none hidden under another chart.
    big = uv_area(head32_layout) * size * size > 4.0
    seen = np.zeros(len(big), bool)
    seen[np.unique(ids[ids >= 0])] = True
    assert seen[big].mean() > 0.99


def test_smoothing_before_charting_cuts_the_chart_count(head32, head32_layout):
    verts, faces = head32
    raw = unwrap_mesh(verts, faces, smooth_iterations=0, pack_resolution=256)
    assert head32_layout.stats["charts"] < 100
    assert raw.stats["charts"] > 3 * head32_layout.stats["charts"], (raw.stats, head32_layout.stats)


def test_corner_uvs_round_trip(head32, head32_layout):
    _, faces = head32
    rebuilt = UVLayout.from_corner_uvs(faces.numpy(), head32_layout.corner_uvs())
    np.testing.assert_array_equal(rebuilt.corner_uvs(), head32_layout.corner_uvs())
    np.testing.assert_array_equal(rebuilt.vmapping[rebuilt.uv_faces], faces.numpy())
    assert len(rebuilt.uv) == len(np.unique(np.c_[head32_layout.vmapping, head32_layout.uv], axis=0))


def test_a_many_chart_atlas_comes_with_a_warning_and_the_fix(monkeypatch):
    import engine.texture.unwrap as unwrap
    from engine.render import icosphere

    verts, faces = icosphere(2, 0.1)
    assert unwrap_mesh(verts, faces, pack_resolution=128).stats["warnings"] == []
    monkeypatch.setattr(unwrap, "NOISY_CHARTS", 0)  # a sphere's few charts now count as "many"
    monkeypatch.setattr(unwrap, "NOISY_CHARTS_PER_1K_FACES", 0)
    (warning,) = unwrap_mesh(verts, faces, pack_resolution=128).stats["warnings"]
    assert " charts for 320 faces" in warning and "Smooth the SDF" in warning and "decimated" in warning
