"""Differentiable head geometry: tetrahedral grid, SDF fields, marching tetrahedra, mesh utilities,
the procedural head initialisation, the view-based fitting loop and the expression model.

Nothing is imported here on purpose: every submodule imports torch at module level, so callers
import the submodule they need (``from engine.geometry.marching_tets import marching_tetrahedra``)
once they already need torch. ``import engine.geometry`` stays standard-library only.

Submodules:
    tetgrid        - the project's own tetrahedral grid (cube grid, 6 tets per cube)
    marching_tets  - differentiable marching tetrahedra (closed, manifold, outward-oriented)
    sdf_field      - hash-grid SDF network and per-vertex SDF + deformation, one interface
    head_init      - analytic head-shaped SDF (cranium, face, jaw, nose, ears, neck) + pretraining
    mesh_utils     - normals, Laplacians, normal consistency, edge lengths, Chamfer, checks
    regularisers   - losses built on the above
    fit            - fit an SDF to normal maps and masks of a target (used by tests, reused by SDS)
    expression     - shared-topology expression model (code per expression + shared MLP)
"""
