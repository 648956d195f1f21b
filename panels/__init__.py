"""Sidebar panels of the 3D view (tab "ID-to-3D"). They only draw; operators do the work."""

CATEGORY = "ID-to-3D"


class SidebarPanel:
    """Where every panel of the add-on lives: the 3D view's sidebar, in its own tab."""

    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = CATEGORY


class UserScenePanel(SidebarPanel):
    """A panel that edits the scene's own generation settings: hidden while the window shows the
    studio scene (whose settings are defaults nobody chose; the Studio panel leads back)."""

    @classmethod
    def poll(cls, context):
        return context.scene is not None and context.scene.get("idto3d_studio") is None
