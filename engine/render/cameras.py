"""Perspective cameras around a head, in the engine's world (Blender: Z up, metres, face toward -Y).

Camera space is OpenGL's: the camera looks down its -Z axis, +Y is up and +X is right in the
image, right-handed. Clip space is OpenGL's too (NDC in [-1, 1]^3, depth -1 at the near plane).

Azimuth and elevation, in degrees, place a camera on a sphere around ``target``:

* azimuth 0 is the *front* camera, located at -Y and looking toward +Y (Blender's Front view);
* positive azimuth turns the camera counter-clockwise seen from above (right-handed about +Z):
  azimuth +90 puts it at +X, looking at the subject's left side; -90 at -X (subject's right);
  +-180 behind the head;
* positive elevation lifts the camera above the target (looking down).

Position = target + radius * (sin(az) cos(el), -cos(az) cos(el), sin(el)).

Each view is labelled for view-dependent prompts: ``front`` when |azimuth| <= 45 deg, ``back``
when |azimuth| >= 135 deg, ``side`` otherwise (azimuth wrapped to (-180, 180]).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

import numpy as np
import torch

FRONT_LIMIT_DEG = 45.0
BACK_LIMIT_DEG = 135.0


def view_label(azimuth_deg: float) -> str:
    """'front', 'side' or 'back' for an azimuth in degrees (see the module docstring)."""
    a = abs(wrap_degrees(azimuth_deg))
    if a <= FRONT_LIMIT_DEG:
        return "front"
    if a >= BACK_LIMIT_DEG:
        return "back"
    return "side"


def wrap_degrees(angle: float) -> float:
    """Angle wrapped to (-180, 180]."""
    a = math.fmod(float(angle), 360.0)
    if a <= -180.0:
        a += 360.0
    elif a > 180.0:
        a -= 360.0
    return a


@dataclass
class Cameras:
    """A batch of B perspective pinhole cameras sharing one image resolution.

    world_to_cam: [B, 4, 4] rigid transforms, world -> OpenGL camera space (looks down -Z).
    fov_y: [B] vertical field of view in radians. resolution: (H, W) in pixels.
    near, far: clip planes in metres. positions: [B, 3] camera centres in world space.
    labels: 'front' | 'side' | 'back' per view. azimuth_deg, elevation_deg: [B] (NaN when the
    view was not made from an orbit).
    """

    world_to_cam: torch.Tensor
    fov_y: torch.Tensor
    resolution: tuple[int, int]
    near: float = 0.05
    far: float = 10.0
    positions: torch.Tensor | None = None
    labels: list[str] = field(default_factory=list)
    azimuth_deg: torch.Tensor | None = None
    elevation_deg: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.world_to_cam.ndim != 3 or self.world_to_cam.shape[1:] != (4, 4):
            raise ValueError(f"world_to_cam must be [B, 4, 4], got {tuple(self.world_to_cam.shape)}")
        b = self.world_to_cam.shape[0]
        dev = self.world_to_cam.device
        fov = torch.as_tensor(self.fov_y, dtype=torch.float32, device=dev)
        self.fov_y = fov.reshape(-1).expand(b).clone()
        self.resolution = (int(self.resolution[0]), int(self.resolution[1]))
        if self.positions is None:
            # Camera centre = -R^T t of the rigid world->camera transform.
            r = self.world_to_cam[:, :3, :3]
            t = self.world_to_cam[:, :3, 3]
            self.positions = -(r.transpose(1, 2) @ t.unsqueeze(-1)).squeeze(-1)
        nan = torch.full((b,), float("nan"), device=dev)
        if self.azimuth_deg is None:
            self.azimuth_deg = nan.clone()
        if self.elevation_deg is None:
            self.elevation_deg = nan.clone()
        if not self.labels:
            self.labels = [
                view_label(float(a)) if not math.isnan(float(a)) else "front" for a in self.azimuth_deg
            ]
        if len(self.labels) != b:
            raise ValueError(f"{len(self.labels)} labels for {b} cameras")

    def __len__(self) -> int:
        return self.world_to_cam.shape[0]

    @property
    def device(self) -> torch.device:
        return self.world_to_cam.device

    def to(self, device) -> "Cameras":
        return Cameras(
            world_to_cam=self.world_to_cam.to(device),
            fov_y=self.fov_y.to(device),
            resolution=self.resolution,
            near=self.near,
            far=self.far,
            positions=self.positions.to(device),
            labels=list(self.labels),
            azimuth_deg=self.azimuth_deg.to(device),
            elevation_deg=self.elevation_deg.to(device),
        )

    def __getitem__(self, index) -> "Cameras":
        """A subset of views: an int, a slice, a list of ints or an index/bool tensor."""
        if isinstance(index, numbers.Integral) or (isinstance(index, torch.Tensor) and index.ndim == 0):
            index = [int(index)]
        if isinstance(index, slice):
            idx = list(range(len(self)))[index]
        elif isinstance(index, torch.Tensor) and index.dtype == torch.bool:
            idx = torch.nonzero(index.cpu()).flatten().tolist()
        else:
            idx = [int(i) for i in (index.tolist() if isinstance(index, torch.Tensor) else index)]
        t = torch.as_tensor(idx, dtype=torch.long, device=self.device)
        return Cameras(
            world_to_cam=self.world_to_cam[t],
            fov_y=self.fov_y[t],
            resolution=self.resolution,
            near=self.near,
            far=self.far,
            positions=self.positions[t],
            labels=[self.labels[i] for i in idx],
            azimuth_deg=self.azimuth_deg[t],
            elevation_deg=self.elevation_deg[t],
        )

    def projection(self) -> torch.Tensor:
        """[B, 4, 4] OpenGL perspective matrices (camera space -> clip space)."""
        h, w = self.resolution
        f = 1.0 / torch.tan(self.fov_y * 0.5)
        n, fa = float(self.near), float(self.far)
        p = torch.zeros(len(self), 4, 4, dtype=torch.float32, device=self.device)
        p[:, 0, 0] = f * (h / w)
        p[:, 1, 1] = f
        p[:, 2, 2] = -(fa + n) / (fa - n)
        p[:, 2, 3] = -2.0 * fa * n / (fa - n)
        p[:, 3, 2] = -1.0
        return p

    def world_to_clip(self) -> torch.Tensor:
        """[B, 4, 4] = projection() @ world_to_cam."""
        return self.projection() @ self.world_to_cam.to(torch.float32)

    def focal_pixels(self) -> torch.Tensor:
        """[B] focal length in pixels (vertical; pixels are square)."""
        return 0.5 * self.resolution[0] / torch.tan(self.fov_y * 0.5)


def look_at(eye: torch.Tensor, target: torch.Tensor, up=(0.0, 0.0, 1.0)) -> torch.Tensor:
    """[B, 4, 4] world->camera transforms for cameras at ``eye`` [B,3] looking at ``target`` [B,3].

    World +Z is "up" in the image; straight up/down views fall back to +Y as up.
    """
    eye = eye.to(torch.float64)
    target = target.to(torch.float64)
    fwd = target - eye
    fwd = fwd / fwd.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    up_t = torch.tensor(up, dtype=torch.float64, device=eye.device).expand_as(fwd)
    right = torch.cross(fwd, up_t, dim=-1)
    degenerate = right.norm(dim=-1) < 1e-8
    if degenerate.any():
        alt = torch.tensor((0.0, 1.0, 0.0), dtype=torch.float64, device=eye.device).expand_as(fwd)
        right = torch.where(degenerate[:, None], torch.cross(fwd, alt, dim=-1), right)
    right = right / right.norm(dim=-1, keepdim=True)
    cam_up = torch.cross(right, fwd, dim=-1)
    rot = torch.stack([right, cam_up, -fwd], dim=1)  # rows: camera axes in world coordinates
    m = torch.zeros(eye.shape[0], 4, 4, dtype=torch.float64, device=eye.device)
    m[:, :3, :3] = rot
    m[:, :3, 3] = -(rot @ eye.unsqueeze(-1)).squeeze(-1)
    m[:, 3, 3] = 1.0
    return m.to(torch.float32)


def radius_for_fill(head_height: float, fov_deg: float, fill: float) -> float:
    """Camera distance at which an object ``head_height`` tall spans ``fill`` of the frame height."""
    return head_height / (2.0 * fill * math.tan(math.radians(fov_deg) * 0.5))


def orbit_cameras(
    azimuth_deg,
    elevation_deg,
    *,
    radius: float,
    fov_deg: float = 30.0,
    resolution=(256, 256),
    target=(0.0, 0.0, 0.0),
    near: float | None = None,
    far: float | None = None,
    device=None,
) -> Cameras:
    """Cameras on a sphere of ``radius`` around ``target`` looking at it (one per angle pair).

    ``azimuth_deg`` and ``elevation_deg`` are sequences (or scalars, broadcast) in degrees; see the
    module docstring for the convention. ``near``/``far`` default to radius/10 and radius*10.
    """
    az = np.atleast_1d(np.asarray(azimuth_deg, dtype=np.float64))
    el = np.atleast_1d(np.asarray(elevation_deg, dtype=np.float64))
    az, el = np.broadcast_arrays(az, el)
    az = np.array([wrap_degrees(a) for a in az])
    a, e = np.radians(az), np.radians(el)
    offset = np.stack([np.sin(a) * np.cos(e), -np.cos(a) * np.cos(e), np.sin(e)], axis=-1) * radius
    tgt = np.array(np.broadcast_to(np.asarray(target, dtype=np.float64), offset.shape))
    eye_t = torch.as_tensor(tgt + offset, device=device)
    w2c = look_at(eye_t, torch.as_tensor(tgt, device=device))
    n = len(az)
    return Cameras(
        world_to_cam=w2c,
        fov_y=torch.full((n,), math.radians(fov_deg), dtype=torch.float32, device=device),
        resolution=tuple(resolution),
        near=float(near if near is not None else radius / 10.0),
        far=float(far if far is not None else radius * 10.0),
        positions=eye_t.to(torch.float32),
        labels=[view_label(x) for x in az],
        azimuth_deg=torch.as_tensor(az, dtype=torch.float32, device=device),
        elevation_deg=torch.as_tensor(el, dtype=torch.float32, device=device),
    )


def sample_orbit_cameras(
    n: int,
    *,
    seed: int,
    radius: float | None = None,
    fov_deg: float = 30.0,
    resolution=(256, 256),
    elevation_range_deg=(-10.0, 30.0),
    azimuth_range_deg=(-180.0, 180.0),
    front_oversample: float = 0.5,
    target=(0.0, 0.0, 0.0),
    head_height: float = 0.23,
    fill: float = 0.7,
    device=None,
) -> Cameras:
    """``n`` random head-centred views, the same for the same ``seed``.

    Elevation is uniform in ``elevation_range_deg``. With probability ``front_oversample`` the
    azimuth is uniform in the front sector (|az| <= 45 deg, clipped to ``azimuth_range_deg``),
    otherwise uniform in ``azimuth_range_deg``: front views, which identity lives in, are drawn
    more often without starving the sides and back. When ``radius`` is None it is chosen so
    that a head ``head_height`` tall fills ``fill`` of the frame height at ``fov_deg``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    lo, hi = float(azimuth_range_deg[0]), float(azimuth_range_deg[1])
    if hi < lo:
        raise ValueError(f"azimuth_range_deg must be (low, high), got {azimuth_range_deg}")
    f_lo, f_hi = max(lo, -FRONT_LIMIT_DEG), min(hi, FRONT_LIMIT_DEG)
    front = rng.random(n) < front_oversample
    az = rng.uniform(lo, hi, size=n)
    if f_hi > f_lo:
        az = np.where(front, rng.uniform(f_lo, f_hi, size=n), az)
    el = rng.uniform(float(elevation_range_deg[0]), float(elevation_range_deg[1]), size=n)
    if radius is None:
        radius = radius_for_fill(head_height, fov_deg, fill)
    return orbit_cameras(
        az, el, radius=radius, fov_deg=fov_deg, resolution=resolution, target=target, device=device
    )
