"""Operators: thin wrappers that edit scene data or start the engine. No engine code runs here."""


def has_active(settings, collection: str, index: str) -> bool:
    """True when ``settings.<index>`` points at an item of ``settings.<collection>`` (remove polls)."""
    return 0 <= getattr(settings, index) < len(getattr(settings, collection))


def remove_active(settings, collection: str, index: str) -> None:
    """Remove the active item of ``settings.<collection>`` and keep a valid active index."""
    items = getattr(settings, collection)
    position = getattr(settings, index)
    items.remove(position)
    setattr(settings, index, max(0, min(position, len(items) - 1)))


def redraw_3d_views(window_manager) -> None:
    """Ask every 3D view to redraw, so the sidebar's status lines move while background work runs."""
    for window in getattr(window_manager, "windows", ()):
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()
