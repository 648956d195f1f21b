"""Sidebar panels of the 3D view (tab "ID-to-3D"). They only draw; operators do the work."""

CATEGORY = "ID-to-3D"


class SidebarPanel:
    """Where every panel of the add-on lives: the 3D view's sidebar, in its own tab."""

    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = CATEGORY
