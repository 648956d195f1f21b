"""Sidebar panels of the 3D view (tab "ID-to-3D"). They only draw; operators do the work."""

CATEGORY = "ID-to-3D"
