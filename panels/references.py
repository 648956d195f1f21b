"""References panel: the photos of the person, with thumbnails and each photo's check status.

Thumbnails come from a ``bpy.utils.previews`` collection created on first draw (nothing is
loaded at registration) and freed by :func:`unregister_previews` when the add-on unregisters.
"""

from __future__ import annotations

import os

import bpy

from . import UserScenePanel

STATUS_ICONS = {
    "UNCHECKED": "QUESTION", "OK": "CHECKMARK", "NO_FACE": "ERROR", "SEVERAL_FACES": "INFO",
    "OUTLIER": "ERROR", "UNREADABLE": "CANCEL", "TOO_SMALL": "ERROR",
}
_previews = None  # the preview collection, created lazily


def register_previews() -> None:
    global _previews
    if _previews is None:
        import bpy.utils.previews

        _previews = bpy.utils.previews.new()


def unregister_previews() -> None:
    global _previews
    if _previews is not None:
        import bpy.utils.previews

        bpy.utils.previews.remove(_previews)
        _previews = None


def thumbnail_icon(path: str) -> int:
    """Icon id of a thumbnail of the photo at ``path`` (0 when it cannot be shown)."""
    absolute = bpy.path.abspath(path)
    if not absolute or not os.path.isfile(absolute):
        return 0
    register_previews()
    try:
        preview = _previews.get(absolute) or _previews.load(absolute, absolute, "IMAGE")
        return preview.icon_id
    except (KeyError, RuntimeError):
        return 0


class IDTO3D_UL_photos(bpy.types.UIList):
    bl_idname = "IDTO3D_UL_photos"

    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index):
        row = layout.row(align=True)
        row.prop(item, "enabled", text="")
        name = os.path.basename(bpy.path.abspath(item.path)) or "(no file)"
        thumbnail = thumbnail_icon(item.path)
        if thumbnail:
            row.label(text=name, icon_value=thumbnail)
        else:
            row.label(text=name, icon="IMAGE_DATA")
        row.label(text="", icon=STATUS_ICONS.get(item.status, "QUESTION"))


class IDTO3D_PT_references(UserScenePanel, bpy.types.Panel):
    bl_idname = "IDTO3D_PT_references"
    bl_label = "References"

    def draw(self, context):
        settings = context.scene.idto3d
        layout = self.layout
        row = layout.row()
        row.template_list("IDTO3D_UL_photos", "", settings, "photos", settings, "photo_index", rows=4)
        column = row.column(align=True)
        column.operator("idto3d.photos_add", icon="ADD", text="")
        column.operator("idto3d.photo_remove", icon="REMOVE", text="")
        column.separator()
        column.operator("idto3d.photos_clear", icon="TRASH", text="")
        if 0 <= settings.photo_index < len(settings.photos):
            photo = settings.photos[settings.photo_index]
            box = layout.box()
            thumbnail = thumbnail_icon(photo.path)
            if thumbnail:
                box.template_icon(icon_value=thumbnail, scale=6.0)
            status_name = photo.bl_rna.properties["status"].enum_items[photo.status].name
            box.label(text=status_name, icon=STATUS_ICONS.get(photo.status, "QUESTION"))
            for line in (photo.message.split(" | ") if photo.message else []):
                box.label(text=line)
        layout.operator("idto3d.photos_check", icon="VIEWZOOM")


CLASSES = (IDTO3D_UL_photos, IDTO3D_PT_references)
