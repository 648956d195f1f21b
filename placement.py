"""Where a new head goes in the user's scene, and bringing it into view.

The engine's head fills a box of :data:`HEAD_BOX_SIZE` around its object origin (the tet grid).
Blender's default scene has a 2 m Cube at the origin, where the 3D cursor also is: a head made at
the cursor sits inside the Cube, invisible in the viewport and in renders. So before a job starts,
:func:`place_head` looks for objects the head would be *hidden inside* at the cursor; if there are
any, the head goes beside them (toward +X, past their bounds) and the note says so, or, with the
placement set to "At the 3D Cursor", it stays there and the note warns.

An object hides the head when (see :func:`hiding`):

- it has geometry and shows in the active view layer's viewport (``visible_get``: object and
  collection hiding, excluded collections) or renders there;
- the head's centre lies strictly inside its world-space bounding box: a floor or any other flat
  object never counts, nor does an object the head merely touches;
- no viewer is inside that box too: the scene's camera and the 3D views' eyes. A room, a set or a
  sky dome the camera looks out from inside of contains the head as well, but the camera sees it;
  the default Cube, seen from outside, hides it.

Bounds are computed once per call; the search for a free spot moves past one object at a time
toward +X and ends after at most one step per object. The user's objects are never moved or
hidden. :func:`frame_in_views` points every 3D view at the head (in the bpy module a 3D view
exists without a window system, so tests can check it).
"""

from __future__ import annotations

from mathutils import Vector

from .engine.result_format import HEAD_BOX_SIZE

HEAD_HALF_EXTENT = HEAD_BOX_SIZE / 2
GAP = 0.1  # metres between the head's box and the geometry it is placed beside
GEOMETRY_TYPES = {"MESH", "CURVE", "SURFACE", "META", "FONT", "CURVES", "POINTCLOUD", "VOLUME", "GREASEPENCIL"}
VIEW_MARGIN = 2.5  # the view's distance in head sizes: the head and a little around it


def world_bounds(obj) -> tuple[Vector, Vector]:
    """The object's bounding box in world space (its evaluated bounds, through its transform)."""
    corners = [obj.matrix_world @ Vector(corner) for corner in obj.bound_box]
    low = Vector((min(c.x for c in corners), min(c.y for c in corners), min(c.z for c in corners)))
    high = Vector((max(c.x for c in corners), max(c.y for c in corners), max(c.z for c in corners)))
    return low, high


def _shows(obj, view_layer) -> bool:
    """Seen in the view layer's viewport, or rendered by it."""
    if obj.visible_get(view_layer=view_layer):
        return True
    if obj.hide_render or obj.name not in view_layer.objects:  # not rendered, or in an excluded collection
        return False
    return any(not collection.hide_render for collection in obj.users_collection)


def _inside(point, low, high) -> bool:
    return all(low[i] < point[i] < high[i] for i in range(3))


def viewer_positions(scene, window_manager=None) -> list[Vector]:
    """Where the scene is looked at from: its camera, and the eye of every 3D view showing it
    (except those looking through a camera: the camera is already in the list)."""
    viewers = [scene.camera.matrix_world.translation.copy()] if scene.camera is not None else []
    for window in getattr(window_manager, "windows", ()):
        if window.scene != scene or window.screen is None:
            continue
        for area in window.screen.areas:
            if area.type != "VIEW_3D":
                continue
            region = area.spaces.active.region_3d
            if region is not None and region.view_perspective != "CAMERA":
                viewers.append(region.view_matrix.inverted().translation.copy())
    return viewers


def scene_bounds(scene, view_layer, *, ignore=()) -> list[tuple[object, Vector, Vector]]:
    """(object, low, high) of every object that could hide a head: geometry that shows."""
    found = []
    for obj in scene.objects:
        if obj.type not in GEOMETRY_TYPES or obj in ignore or obj.get("idto3d_rig"):
            continue
        if _shows(obj, view_layer):
            found.append((obj, *world_bounds(obj)))
    return found


def hiding(bounds, centre, viewers=()) -> list:
    """The objects of ``bounds`` (see :func:`scene_bounds`) a head at ``centre`` would be hidden
    inside: its centre is inside their box and no viewer is."""
    centre = Vector(centre)
    return [obj for obj, low, high in bounds
            if _inside(centre, low, high) and not any(_inside(eye, low, high) for eye in viewers)]


def overlapping(scene, centre, half: float = HEAD_HALF_EXTENT, *, view_layer=None, ignore=()) -> list:
    """Objects that show whose bounds overlap the cube of ``half`` around ``centre`` (a looser test
    than :func:`hiding`: what a head there would touch)."""
    centre = Vector(centre)
    return [obj for obj, low, high in scene_bounds(scene, view_layer or scene.view_layers[0], ignore=ignore)
            if all(low[i] - half < centre[i] < high[i] + half for i in range(3))]


def place_head(scene, cursor, *, beside: bool = True, half: float = HEAD_HALF_EXTENT, view_layer=None,
               viewers=None, window_manager=None):
    """(location, note): the cursor when the head would not be hidden there, else beside what
    would hide it.

    ``note`` is empty when nothing is in the way; otherwise it names the objects and says where
    the head went (or, with ``beside`` False, that it stays hidden at the cursor). ``view_layer``
    is the one the user works in (default: the scene's first); ``viewers`` the points the scene is
    seen from (default: :func:`viewer_positions`).
    """
    cursor = Vector(cursor)
    view_layer = view_layer or scene.view_layers[0]
    viewers = viewer_positions(scene, window_manager) if viewers is None else [Vector(v) for v in viewers]
    bounds = scene_bounds(scene, view_layer)
    blockers = hiding(bounds, cursor, viewers)
    if not blockers:
        return cursor, ""
    names = ", ".join(sorted(obj.name for obj in blockers)[:3]) + (" …" if len(blockers) > 3 else "")
    if not beside:
        return cursor, (
            f"The head is made at the 3D cursor, inside {names}: it will be hidden until you move it "
            "or hide them (Placement: Beside Other Objects avoids this)"
        )
    location, free = cursor.copy(), False
    high_x = {obj: high.x for obj, _, high in bounds}
    for _ in range(len(bounds) + 1):  # x only grows past each object's box: at most one step per object
        in_the_way = hiding(bounds, location, viewers)
        if not in_the_way:
            free = True
            break
        location.x = max(high_x[obj] for obj in in_the_way) + half + GAP
    where = ", ".join(f"{value:.2f}" for value in location)
    if not free:
        return location, (
            f"The 3D cursor is inside {names}, and no free spot was found beside it: the head goes to ({where}) m, "
            "where it may still be hidden. Move it where you want it once it is made"
        )
    return location, (
        f"The 3D cursor is inside {names}: the head goes beside it, at ({where}) m, so it can be seen. "
        "Move it where you want it once it is made"
    )


def frame_in_views(window_manager, centre, half: float = HEAD_HALF_EXTENT) -> int:
    """Point every 3D view (not those looking through a camera) at the head; how many were moved."""
    framed = 0
    for window in getattr(window_manager, "windows", ()):
        screen = window.screen
        for area in screen.areas if screen else ():
            if area.type != "VIEW_3D":
                continue
            region = area.spaces.active.region_3d
            if region is None or region.view_perspective == "CAMERA":
                continue  # the user looks through a camera on purpose
            region.view_location = Vector(centre)
            region.view_distance = 2 * half * VIEW_MARGIN
            area.tag_redraw()
            framed += 1
    return framed
