"""Differentiable triangle rasteriser in plain torch (CPU and GPU).

Three steps, mirroring nvdiffrast's rasterize / interpolate / antialias split:

1. Visibility (no gradients). Every triangle's pixel bounding box is enumerated exactly
   (``repeat_interleave`` over box sizes, in chunks of a bounded number of candidate pixels), the
   edge functions are tested at pixel centres and a packed key (quantised NDC depth in the high
   32 bits, face id in the low bits) is reduced with ``scatter_reduce(amin)``: a z-buffer that
   yields, per pixel, the nearest face. Memory is O(chunk + B*H*W) whatever the mesh size.
2. Barycentrics (differentiable). For the winning face of every covered pixel the screen-space
   barycentrics are recomputed from the projected vertices, then made perspective-correct
   (b_i / w_i, renormalised). Interpolated attributes therefore carry gradients to both the
   attributes and the vertex positions ("interior" gradients).
3. Anti-aliasing (differentiable), with nvdiffrast's semantics -- each pixel pair across which
   the visible surface ends is blended once -- but driven by the silhouette edges themselves
   rather than by the face seen in each pixel (so it still works when faces are smaller than
   pixels, as on marching-tets meshes). Silhouette edges of a view are mesh edges on the open
   boundary or between a front- and a back-facing face. Each one is intersected with the lines
   joining adjacent pixel centres across it (pixel rows for mostly vertical edges, columns for
   mostly horizontal ones). A crossing counts when the pixel on the surface's side is covered
   and nearer, and the pixel beyond shows nothing or something farther away than the edge (else
   the edge is hidden). Several contour edges may cross one pair on jagged meshes; only the
   outermost crossing (where the projected surface ends) is kept. With s in [0, 1] its distance
   from the inside pixel's centre, the pixel in whose half it falls is blended toward its
   neighbour by |s - 1/2|: along a scanline this reproduces the exact covered length, so mask
   sums match the area closely, and s depends on the edge's vertices: silhouette gradients.
   A pixel blended by several pairs whose weights sum past 1 has them scaled to sum to 1, so
   every output is a convex combination of input pixels (each pass stays in its range).

Conventions: pixel (row i, column j) has its centre at screen (x=j, y=i); row 0 is the top.
Triangles with a vertex at or behind the camera plane (w <= 0) are dropped, not clipped;
pixels whose depth falls outside the near/far range are not drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .mesh_ops import MeshTopology, mesh_topology, silhouette_edges

# Candidate (triangle, pixel) pairs processed at once in the visibility pass; bounds memory
# to roughly 100 bytes x this number.
CHUNK_CANDIDATES = 1 << 21
_DEPTH_LEVELS = float(1 << 30)
_EMPTY = torch.iinfo(torch.int64).max


@dataclass
class Raster:
    """Result of :func:`rasterize`: which face each pixel sees and where inside it.

    face_id: [B, H, W] int64, -1 where no face. pix: [N] flat index (b*H*W + row*W + col) of the
    covered pixels; view: [N]; face: [N]; bary: [N, 3] perspective-correct barycentrics
    (differentiable); w: [N] clip w (= camera-space depth) at the pixel (differentiable).
    screen: [B, V, 2] projected vertices in pixel units, clip_w: [B, V] (differentiable);
    silhouette: [B, E] silhouette flags of topology's edges.
    """

    face_id: torch.Tensor
    pix: torch.Tensor
    view: torch.Tensor
    face: torch.Tensor
    bary: torch.Tensor
    w: torch.Tensor
    screen: torch.Tensor
    clip_w: torch.Tensor
    silhouette: torch.Tensor
    topology: MeshTopology
    resolution: tuple[int, int]

    @property
    def batch(self) -> int:
        return self.face_id.shape[0]


class _GatherRows(torch.autograd.Function):
    """table[index] with an index_add backward. On CPU, embedding's forward kernel is several
    times faster than advanced indexing for row gathers, and index_add several times faster
    than embedding's own backward."""

    @staticmethod
    def forward(ctx, table, index):
        import torch.nn.functional as F

        ctx.save_for_backward(index)
        ctx.rows = table.shape[0]
        return F.embedding(index, table)

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        out = grad.new_zeros(ctx.rows, grad.shape[-1])
        return out.index_add_(0, index, grad.reshape(-1, grad.shape[-1])), None


def gather_rows(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """table[index] for a 2-D table [M, C] and a 1-D index, differentiable w.r.t. table."""
    if table.is_floating_point():
        return _GatherRows.apply(table, index)
    return table.index_select(0, index)


def to_screen(clip: torch.Tensor, resolution) -> torch.Tensor:
    """[B,V,4] clip -> [B,V,3] (x pixel, y pixel, NDC z); pixel centres at integer coordinates."""
    h, w = resolution
    inv_w = 1.0 / clip[..., 3]
    x = (clip[..., 0] * inv_w + 1.0) * (0.5 * w) - 0.5
    y = (1.0 - clip[..., 1] * inv_w) * (0.5 * h) - 0.5
    return torch.stack([x, y, clip[..., 2] * inv_w], dim=-1)


def _candidate_chunks(counts: torch.Tensor, ends: torch.Tensor):
    """(first triangle, end triangle, first candidate, candidate count) of each chunk of whole
    triangles, cut after the last triangle ending at or before each multiple of CHUNK_CANDIDATES
    candidate pixels (a triangle larger than that shares its chunk with the triangles after it,
    up to the next cut). One host read-back of the total; a second, of all the boundaries at
    once, only when there is more than one chunk."""
    if ends.numel() == 0:
        return []
    total = int(ends[-1])
    if total == 0:
        return []
    if total <= CHUNK_CANDIDATES:
        return [(0, ends.numel(), 0, total)]
    # Chunk j ends at the last triangle ending at or before (j + 1) * CHUNK_CANDIDATES.
    marks = torch.arange(1, -(-total // CHUNK_CANDIDATES), device=ends.device) * CHUNK_CANDIDATES
    cuts = torch.searchsorted(ends, marks, right=True)
    before = torch.where(cuts > 0, ends.index_select(0, (cuts - 1).clamp_min(0)), 0)
    bounds = [(0, 0)] + list(zip(*torch.stack([cuts, before]).tolist())) + [(ends.numel(), total)]
    chunks = []
    for (tri_start, start), (tri_end, end) in zip(bounds, bounds[1:]):
        if tri_end > tri_start and end > start:
            chunks.append((tri_start, tri_end, start, end - start))
    return chunks


@torch.no_grad()
def _visibility(scr: torch.Tensor, clip_w: torch.Tensor, faces: torch.Tensor, resolution, cull_backfaces=False):
    """([B, H, W] nearest face id (-1 none), [B, F] facing) via an exact bounding-box z-buffer.

    facing is the sign of the face's screen-space area (which way it turns in this view)."""
    h, w = resolution
    b, _ = scr.shape[:2]
    f = faces.shape[0]
    dev = scr.device
    scr = scr.to(torch.float64) if scr.dtype == torch.float64 else scr.float()
    fidx = faces.reshape(-1)

    def per_corner(a):  # [B, V] -> [B, F, 3]; column-wise index_select is much faster than a row gather
        return a.contiguous().index_select(1, fidx).reshape(b, f, 3)

    x, y, z = per_corner(scr[..., 0]), per_corner(scr[..., 1]), per_corner(scr[..., 2])
    ok = (per_corner(clip_w) > 0).all(-1)
    x0, x1, x2 = x.unbind(-1)
    y0, y1, y2 = y.unbind(-1)
    area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
    facing = area > 0
    ok &= area.abs() > 1e-12
    if cull_backfaces:
        # Counter-clockwise (outward) faces turn clockwise on screen because image y points down.
        ok &= ~facing
    xmin = torch.ceil(x.amin(-1)).clamp_min(0)
    xmax = torch.floor(x.amax(-1)).clamp_max(w - 1)
    ymin = torch.ceil(y.amin(-1)).clamp_min(0)
    ymax = torch.floor(y.amax(-1)).clamp_max(h - 1)
    ok &= (xmax >= xmin) & (ymax >= ymin) & torch.isfinite(area)
    ok &= (z.amin(-1) <= 1.0) & (z.amax(-1) >= -1.0)
    # Compact to the (view, face) pairs that can cover a pixel: one data-dependent size, but every
    # per-face array below shrinks to them (half the faces or fewer with culling).
    cand = torch.nonzero(ok.reshape(-1)).squeeze(1)  # flat (b*F + f)
    zbuf = torch.full((b * h * w,), _EMPTY, dtype=torch.int64, device=dev)
    if cand.numel() == 0:
        return torch.full((b, h, w), -1, dtype=torch.int64, device=dev), facing

    def flat(t):
        return t.reshape(-1).index_select(0, cand)

    # Watertight edge functions: a shared edge is always evaluated from its lower-index vertex
    # and negated for the other face, so neighbouring faces get exactly opposite values and no
    # pixel centre falls through a crack between them. Orientation is folded in by the sign.
    fv = faces.index_select(0, cand % f)  # [T, 3] vertex ids
    orient = torch.sign(flat(area))
    coefs = []
    for k in range(3):
        i, j = k, (k + 1) % 3
        swap = fv[:, i] > fv[:, j]
        xi, yi = flat(x[..., i].contiguous()), flat(y[..., i].contiguous())
        xj, yj = flat(x[..., j].contiguous()), flat(y[..., j].contiguous())
        xr, yr = torch.where(swap, xj, xi), torch.where(swap, yj, yi)
        dx, dy = torch.where(swap, xi - xj, xj - xi), torch.where(swap, yi - yj, yj - yi)
        sgn = torch.where(swap, -orient, orient)
        coefs += [xr, yr, dx * sgn, dy * sgn]
    z0, z1, z2 = (flat(t.contiguous()) for t in z.unbind(-1))
    # e_k weights the vertex opposite edge k: e_0 -> v2, e_1 -> v0, e_2 -> v1.
    # Kept as separate contiguous columns: 1-D index_select is far faster than gathering rows.
    coef = [c.contiguous() for c in coefs + [z2, z0, z1]]
    bx0 = flat(xmin).long()
    by0 = flat(ymin).long()
    bw = flat(xmax).long() - bx0 + 1
    counts = bw * (flat(ymax).long() - by0 + 1)
    face_of = cand % f  # per candidate: its face, and the flat index of its view's first pixel
    view_base = torch.div(cand, f, rounding_mode="floor") * (h * w)
    ends = torch.cumsum(counts, 0)
    for tri_start, tri_end, start, n in _candidate_chunks(counts, ends):
        # Whole triangles per chunk, about CHUNK_CANDIDATES candidate pixels each.
        cnt = counts[tri_start:tri_end]
        local_t = torch.repeat_interleave(torch.arange(tri_end - tri_start, device=dev), cnt, output_size=n)
        offs = torch.cumsum(cnt, 0) - cnt
        k = torch.arange(n, device=dev) - offs.index_select(0, local_t)
        t = local_t + tri_start

        def g(col):
            return col.index_select(0, t)

        bw_t = g(bw)
        py_off = torch.div(k, bw_t, rounding_mode="floor")
        px = g(bx0) + (k - py_off * bw_t)
        py = g(by0) + py_off
        pxf = px.to(coef[0].dtype)
        pyf = py.to(coef[0].dtype)
        e = [g(coef[4 * j + 2]) * (pyf - g(coef[4 * j + 1])) - g(coef[4 * j + 3]) * (pxf - g(coef[4 * j]))
             for j in range(3)]
        tot = e[0] + e[1] + e[2]
        zz = (e[0] * g(coef[12]) + e[1] * g(coef[13]) + e[2] * g(coef[14])) / tot
        inside = (e[0] >= 0) & (e[1] >= 0) & (e[2] >= 0) & (tot > 0) & (zz >= -1.0) & (zz <= 1.0)
        # Outside candidates get the empty key (amin's identity) instead of being compacted away:
        # the same z-buffer without a data-dependent nonzero.
        zq = ((torch.where(inside, zz, 0.0) + 1.0) * (0.5 * _DEPTH_LEVELS)).long()
        zq.clamp_(0, int(_DEPTH_LEVELS) - 1)
        key = torch.where(inside, (zq << 32) | g(face_of), _EMPTY)
        pix = g(view_base) + py * w + px
        zbuf.scatter_reduce_(0, pix, key, reduce="amin")
    face_id = torch.where(zbuf == _EMPTY, torch.full_like(zbuf, -1), zbuf & 0xFFFFFFFF)
    return face_id.reshape(b, h, w), facing


def rasterize(
    clip: torch.Tensor,
    faces: torch.Tensor,
    resolution,
    topology: MeshTopology | None = None,
    cull_backfaces: bool = False,
) -> Raster:
    """Rasterise [B, V, 4] clip-space vertices with [F, 3] faces at resolution (H, W).

    cull_backfaces skips faces turned away from the camera (counter-clockwise seen from outside
    is the front): about half the work on closed, consistently oriented meshes, same image."""
    h, w = int(resolution[0]), int(resolution[1])
    faces = faces.long()
    scr = to_screen(clip, (h, w))
    face_id, facing = _visibility(scr.detach(), clip[..., 3].detach(), faces, (h, w), cull_backfaces)
    flat_id = face_id.reshape(-1)
    pix = torch.nonzero(flat_id >= 0).squeeze(1)
    face = flat_id[pix]
    view = torch.div(pix, h * w, rounding_mode="floor")
    rem = pix - view * (h * w)
    py = torch.div(rem, w, rounding_mode="floor").to(scr.dtype)
    px = (rem % w).to(scr.dtype)
    nv = clip.shape[1]
    corner = faces.index_select(0, face) + (view * nv)[:, None]  # [N, 3] rows of the [B*V] table
    table = torch.stack([scr[..., 0], scr[..., 1], clip[..., 3]], dim=-1).reshape(-1, 3)
    g = gather_rows(table, corner.reshape(-1)).reshape(-1, 3, 3)
    sx, sy, cw = g[..., 0], g[..., 1], g[..., 2]
    dx = sx - px[:, None]
    dy = sy - py[:, None]
    # Edge function opposite vertex k, evaluated at the pixel centre.
    e = torch.stack(
        [
            dx[:, 1] * dy[:, 2] - dx[:, 2] * dy[:, 1],
            dx[:, 2] * dy[:, 0] - dx[:, 0] * dy[:, 2],
            dx[:, 0] * dy[:, 1] - dx[:, 1] * dy[:, 0],
        ],
        dim=1,
    )
    bary_screen = e / e.sum(1, keepdim=True)
    q = bary_screen / cw
    qs = q.sum(1, keepdim=True)
    bary = q / qs
    depth_w = 1.0 / qs.squeeze(1)

    with torch.no_grad():
        topo = topology if topology is not None else mesh_topology(faces)
        sil = silhouette_edges(topo, facing)
    return Raster(
        face_id=face_id,
        pix=pix,
        view=view,
        face=face,
        bary=bary,
        w=depth_w,
        screen=scr[..., :2],
        clip_w=clip[..., 3],
        silhouette=sil,
        topology=topo,
        resolution=(h, w),
    )


def interpolate(attr: torch.Tensor, raster: Raster, faces: torch.Tensor) -> torch.Tensor:
    """Perspective-correct interpolation of vertex attributes -> [B, H, W, C], 0 where no face.

    attr: [V, C] shared by all views or [B, V, C] per view.
    """
    faces = faces.long()
    vidx = faces.index_select(0, raster.face)  # [N, 3]
    if attr.ndim == 3:
        vidx = vidx + (raster.view * attr.shape[1])[:, None]
        attr = attr.reshape(-1, attr.shape[-1])
    a = gather_rows(attr, vidx.reshape(-1)).reshape(vidx.shape[0], 3, attr.shape[-1])  # [N, 3, C]; N may be 0
    vals = (a * raster.bary.unsqueeze(-1).to(a.dtype)).sum(1)
    return scatter_pixels(vals, raster)


def scatter_pixels(vals: torch.Tensor, raster: Raster, fill: float = 0.0) -> torch.Tensor:
    """Place per-covered-pixel values [N, C] into a dense [B, H, W, C] image (fill elsewhere)."""
    h, w = raster.resolution
    out = torch.full((raster.batch * h * w, vals.shape[1]), fill, dtype=vals.dtype, device=vals.device)
    out = out.index_copy(0, raster.pix, vals)
    return out.reshape(raster.batch, h, w, vals.shape[1])


def _silhouette_screen(raster: Raster):
    """The silhouette edges of every view on screen, for both crossing passes: (view [M], a, b and
    the opposite vertex c [M, 2] (differentiable), clip w at a and b [M])."""
    topo = raster.topology
    scr = raster.screen
    bi, ei = torch.nonzero(raster.silhouette, as_tuple=True)
    va, vb = topo.edge_vertices[ei, 0], topo.edge_vertices[ei, 1]
    vc = topo.edge_opposite[ei]
    base = bi * scr.shape[1]
    table = scr.reshape(-1, 2)
    pa, pb, pc = (gather_rows(table, base + v) for v in (va, vb, vc))  # [M, 2] differentiable
    w_flat = raster.clip_w.detach().reshape(-1)
    return bi, pa, pb, pc, w_flat.index_select(0, base + va), w_flat.index_select(0, base + vb)


@torch.no_grad()
def _crossing_lines(raster: Raster, edges, vertical: bool):
    """(first line, number of lines) each silhouette edge crosses in one pass of
    :func:`_edge_crossings` (0 lines for the edges the other pass takes)."""
    h, w = raster.resolution
    _, pa, pb, _, _, _ = edges
    u_ax, v_ax = (0, 1) if vertical else (1, 0)
    n_v = h if vertical else w
    d = pb - pa
    keep = (d[:, v_ax].abs() >= d[:, u_ax].abs()) if vertical else (d[:, u_ax].abs() < d[:, v_ax].abs())
    keep &= d[:, v_ax].abs() > 1e-9
    lo = torch.minimum(pa[:, v_ax], pb[:, v_ax])
    hi = torch.maximum(pa[:, v_ax], pb[:, v_ax])
    # Half-open [lo, hi): a line through a vertex shared by two edges is counted once.
    first = torch.ceil(lo).clamp_min(0).long()
    last = (torch.ceil(hi) - 1).clamp_max(n_v - 1).long()
    counts = torch.where(keep, (last - first + 1).clamp_min(0), 0)
    return first, counts


def _edge_crossings(raster: Raster, depth: torch.Tensor, vertical: bool, edges, first, counts, n: int):
    """Crossings of visible silhouette edges with the segments joining adjacent pixel centres.

    vertical=True takes edges running mostly vertically (|dy| >= |dx|) and intersects them with
    pixel rows (horizontal pixel pairs); False takes the others with pixel columns. Returns
    (inside_pix, outside_pix, s): flat pixel indices and the crossing's distance from the inside
    pixel's centre in pixel units, in [0, 1], differentiable w.r.t. the edge's vertices. One
    pixel pair may appear several times here (see :func:`_one_crossing_per_pair`).
    ``edges``: :func:`_silhouette_screen`; ``first``, ``counts``: :func:`_crossing_lines` for this
    pass; ``n``: counts' sum, read back once for both passes.
    """
    h, w = raster.resolution
    scr = raster.screen
    bi, pa, pb, pc, wa, wb = edges
    # Work in (u, v) = (x, y) for mostly vertical edges, (y, x) otherwise: always step along v.
    u_ax, v_ax = (0, 1) if vertical else (1, 0)
    n_u = w if vertical else h
    empty = bi.new_zeros(0)
    if n == 0:
        return empty, empty, scr.new_zeros(0)
    m = torch.repeat_interleave(torch.arange(bi.numel(), device=bi.device), counts, output_size=n)
    offs = torch.cumsum(counts, 0) - counts
    line = first[m] + (torch.arange(n, device=bi.device) - offs[m])
    a, b_, c = pa[m], pb[m], pc[m]
    t = (line.to(a.dtype) - a[:, v_ax]) / (b_[:, v_ax] - a[:, v_ax])
    u_cross = a[:, u_ax] + t * (b_[:, u_ax] - a[:, u_ax])
    with torch.no_grad():
        # Which side of the edge the surface lies on: that of the opposite vertex.
        tc = (c[:, v_ax] - a[:, v_ax]) / (b_[:, v_ax] - a[:, v_ax])
        inside_up = c[:, u_ax] > a[:, u_ax] + tc * (b_[:, u_ax] - a[:, u_ax])
        lower = torch.floor(u_cross.detach()).long()
        ok = (lower >= 0) & (lower <= n_u - 2)
        inside_u = torch.where(inside_up, lower + 1, lower)
        outside_u = torch.where(inside_up, lower, lower + 1)
        view = bi[m]

        def flat(uu):
            row, col = (line, uu) if vertical else (uu, line)
            return view * (h * w) + row.clamp(0, h - 1) * w + col.clamp(0, w - 1)

        pin, pout = flat(inside_u), flat(outside_u)
        inv_w = (1.0 - t.detach()) / wa[m].detach() + t.detach() / wb[m].detach()
        edge_depth = 1.0 / inv_w
        flat_depth = depth.reshape(-1)
        # The edge is seen if its inside pixel is covered and the outside pixel shows nothing
        # or something farther away (an occluder in front would cover the outside pixel too).
        d_in, d_out = flat_depth[pin], flat_depth[pout]
        ok &= torch.isfinite(d_in) & (d_out > edge_depth * (1.0 + 1e-4))
        # The surface side is the nearer pixel: this also makes the orientation of a pair unique.
        ok &= d_in < d_out
        ok &= raster.face_id.reshape(-1)[pin] != raster.face_id.reshape(-1)[pout]
    sel = torch.nonzero(ok).squeeze(1)
    s = (u_cross[sel] - inside_u[sel].to(u_cross.dtype)).abs()
    return pin[sel], pout[sel], s


@torch.no_grad()
def _one_crossing_per_pair(pin: torch.Tensor, pout: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Indices of the crossings to keep: exactly one per pixel pair, the outermost (largest s).

    Marching-tets silhouettes zigzag, and small front/back-facing patches near the outline add
    contour edges of their own, so several edges may cross one pixel pair. Blending once per
    edge over-blends such pairs (masks below 0 or above 1, gradients multiplied by the count);
    nvdiffrast blends each pair once. Along the segment from the covered pixel to its
    neighbour, the last contour crossing is where the projected surface ends (beyond it no edge
    separates covered from uncovered, and the neighbour is uncovered or farther), so that is the
    one kept.
    """
    if pin.numel() == 0:
        return pin
    # Within one pass a pixel pair is named by its lower pixel; compact ids keep this O(crossings).
    pairs, pair_of = torch.unique(torch.minimum(pin, pout), return_inverse=True)
    n = pairs.numel()
    best = torch.full((n,), -1.0, dtype=s.dtype, device=s.device)
    best.scatter_reduce_(0, pair_of, s.detach(), reduce="amax")
    order = torch.arange(pin.numel(), device=pin.device)
    big = pin.numel()
    candidates = torch.where(s.detach() == best[pair_of], order, torch.full_like(order, big))
    first = torch.full((n,), big, dtype=torch.long, device=pin.device)
    return first.scatter_reduce_(0, pair_of, candidates, reduce="amin")  # ties: the first crossing


def antialias_weights(raster: Raster):
    """The blends anti-aliasing applies: (target pixel, source pixel, weight), flat pixel indices.

    ``antialias`` moves each target pixel's value toward its source pixel's by the weight. At
    most one entry per pixel pair (the crossing kept by :func:`_one_crossing_per_pair`), each
    weight in [0, 1/2]; where one pixel is blended by several of its four pairs (corners, thin
    features) and its weights add up to more than 1, they are scaled to sum to 1. So every
    blended value is a convex combination of neighbouring values: each pass stays within the
    range of its unblended values (mask in [0, 1], unit normals in the unit ball).
    Weights are differentiable w.r.t. the projected vertices of the silhouette edges.
    """
    with torch.no_grad():
        depth = scatter_pixels(raster.w.detach()[:, None], raster, fill=float("inf"))
    targets, sources, weights = [], [], []
    edges = _silhouette_screen(raster)
    lines = [_crossing_lines(raster, edges, vertical) for vertical in (True, False)]
    sizes = torch.stack([lines[0][1].sum(), lines[1][1].sum()]).tolist()  # the one read-back for both passes
    for vertical, (first, counts), n in zip((True, False), lines, sizes):
        inside, outside, s = _edge_crossings(raster, depth, vertical, edges, first, counts, n)
        keep = _one_crossing_per_pair(inside, outside, s)
        if keep.numel() == 0:
            continue
        inside, outside, s = inside[keep], outside[keep], s[keep]
        near_side = s < 0.5
        # Crossing in the inside pixel's half: that pixel is partly covered by what lies beyond;
        # in the outside pixel's half: that pixel is partly covered by the surface.
        targets.append(torch.where(near_side, inside, outside))
        sources.append(torch.where(near_side, outside, inside))
        weights.append((s - 0.5).abs())
    if not targets:
        empty = torch.zeros(0, dtype=torch.long, device=raster.face_id.device)
        return empty, empty, raster.screen.new_zeros(0)
    target, source, weight = torch.cat(targets), torch.cat(sources), torch.cat(weights)
    blended, slot = torch.unique(target, return_inverse=True)
    total = weight.new_zeros(blended.numel()).index_add(0, slot, weight)
    weight = weight / total.clamp_min(1.0)[slot]
    return target, source, weight


def antialias(color: torch.Tensor, raster: Raster, faces: torch.Tensor | None = None) -> torch.Tensor:
    """Blend ``color`` [B, H, W, C] across visible silhouette edges (see the module docstring)."""
    b, h, w, c = color.shape
    flat = color.reshape(-1, c)
    target, source, weight = antialias_weights(raster)
    if target.numel() == 0:
        return color
    weight = weight.to(flat.dtype)[:, None]
    delta = (flat[source] - flat[target]) * weight
    return flat.index_add(0, target, delta).reshape(b, h, w, c)
