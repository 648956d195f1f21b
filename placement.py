"""Where a new head goes in the user's scene, and bringing it into view.

The engine's head fills a box of about 0.32 m around its object origin (the tet grid). Blender's
default scene has a 2 m Cube at the origin, where the 3D cursor also is: a head made at the cursor
sits inside the Cube, invisible in the viewport and in renders. So before a job starts,
:func:`place_head` checks the head's box at the cursor against every visible object that has
geometry; if it would overlap one, the head goes beside them (toward +X, past their bounds) and the
note says so, or, with the placement set to "At the 3D Cursor", it stays there and the note warns.
The user's objects are never moved or hidden. :func:`frame_in_views` points every 3D view at the
head (in the bpy module a 3D view exists without a window system, so tests can check it).
"""

from __future__ import annotations

from mathutils import Vector

HEAD_HALF_EXTENT = 0.16  # half the engine's 0.32 m head box (engine/geometry: the tet grid)
GAP = 0.1  # metres between the head's box and the geometry it is placed beside
GEOMETRY_TYPES = {"MESH", "CURVE", "SURFACE", "META", "FONT", "CURVES", "POINTCLOUD", "VOLUME", "GREASEPENCIL"}
VIEW_MARGIN = 2.5  # the view's distance in head sizes: the head and a little around it


def world_bounds(obj) -> tuple[Vector, Vector]:
    """The object's bounding box in world space (its evaluated bounds, through its transform)."""
    corners = [obj.matrix_world @ Vector(corner) for corner in obj.bound_box]
    low = Vector((min(c.x for c in corners), min(c.y for c in corners), min(c.z for c in corners)))
    high = Vector((max(c.x for c in corners), max(c.y for c in corners), max(c.z for c in corners)))
    return low, high


def overlapping(scene, centre, half: float = HEAD_HALF_EXTENT, *, view_layer=None, ignore=()) -> list:
    """Visible objects with geometry whose bounds overlap the cube of ``half`` around ``centre``."""
    view_layer = view_layer or scene.view_layers[0]
    centre = Vector(centre)
    found = []
    for obj in scene.objects:
        if obj.type not in GEOMETRY_TYPES or obj in ignore or obj.get("idto3d_rig"):
            continue
        if not (obj.visible_get(view_layer=view_layer) or not obj.hide_render):
            continue  # hidden everywhere: it hides nothing
        low, high = world_bounds(obj)
        if all(low[i] - half < centre[i] < high[i] + half for i in range(3)):
            found.append(obj)
    return found


def place_head(scene, cursor, *, beside: bool = True, half: float = HEAD_HALF_EXTENT, view_layer=None):
    """(location, note): the cursor when the head is free there, else beside what it would be inside.

    ``note`` is empty when nothing is in the way; otherwise it names the objects and says where
    the head went (or, with ``beside`` False, that it stays hidden at the cursor).
    """
    cursor = Vector(cursor)
    blockers = overlapping(scene, cursor, half, view_layer=view_layer)
    if not blockers:
        return cursor, ""
    names = ", ".join(sorted(obj.name for obj in blockers)[:3]) + (" …" if len(blockers) > 3 else "")
    if not beside:
        return cursor, (
            f"The head is made at the 3D cursor, inside {names}: it will be hidden until you move it "
            "or hide them (Placement: Beside Other Objects avoids this)"
        )
    location = cursor.copy()
    for _ in range(64):  # each step clears at least one more object; a scene has finitely many
        in_the_way = overlapping(scene, location, half, view_layer=view_layer)
        if not in_the_way:
            break
        location.x = max(world_bounds(obj)[1].x for obj in in_the_way) + half + GAP
    where = ", ".join(f"{value:.2f}" for value in location)
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
