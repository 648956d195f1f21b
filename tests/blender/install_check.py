"""Run in a fresh Python (subprocess) with BLENDER_USER_RESOURCES pointing at a temp folder.

Installs the extension zip given as argv[1] into real Blender (the bpy module), enables it,
records what got registered, disables and uninstalls it, records what is left, and prints one
JSON object for the test to assert on.
"""

import json
import re
import sys
from pathlib import Path

zip_path, source_dir = Path(sys.argv[1]), Path(sys.argv[2])
sys.path.insert(0, str(source_dir / "scripts"))

import bpy  # noqa: E402  (first: it puts Blender's own modules such as addon_utils on sys.path)
import addon_utils  # noqa: E402
from extension_tools import install_and_enable, manifest  # noqa: E402

class_names = sorted({
    name
    for path in source_dir.rglob("*.py")
    if not ({"tests", "scripts", "bench", ".venv", "engine"} & set(path.relative_to(source_dir).parts))
    for name in re.findall(r"^class (IDTO3D_\w+)\(", path.read_text(encoding="utf-8"), re.M)
})
report = {"class_names": class_names, "user_resources": bpy.utils.resource_path("USER")}

module = install_and_enable(zip_path)
report["module"] = module
addon = bpy.context.preferences.addons[module]
report["installed_dir"] = str(Path(sys.modules[module].__file__).parent)
report["prefs"] = {
    name: getattr(addon.preferences, name, "<missing>")
    for name in ("python_executable", "models_root", "device", "allow_downloads")
}
scene = bpy.context.scene
report["scene_has_settings"] = hasattr(scene, "idto3d")
report["expressions"] = [item.text for item in scene.idto3d.expressions]
report["preset"] = scene.idto3d.preset
classes = list(sys.modules[module].CLASSES)
report["classes_in_register_list"] = sorted(cls.__name__ for cls in classes)
report["registered_after_enable"] = sorted(cls.__name__ for cls in classes if cls.is_registered)

bpy.ops.idto3d.expression_add(text="with curly red hair")
report["expressions_after_add"] = [item.text for item in scene.idto3d.expressions]

addon_utils.disable(module, default_set=True)
report["enabled_after_disable"] = module in bpy.context.preferences.addons
report["registered_after_disable"] = sorted(cls.__name__ for cls in classes if cls.is_registered)
report["rna_types_left"] = [name for name in class_names if hasattr(bpy.types, name)]
report["scene_property_after_disable"] = hasattr(bpy.types.Scene, "idto3d")
report["wm_property_after_disable"] = hasattr(bpy.types.WindowManager, "idto3d_runtime")
report["load_post_handlers_left"] = [
    f"{h.__module__}.{h.__name__}" for h in bpy.app.handlers.load_post if "id_to_3d" in h.__module__
]
# Enabling again after a disable must work and register everything exactly once.
addon_utils.enable(module, default_set=True)
reloaded = list(sys.modules[module].CLASSES)  # a re-enable may reload the module: fresh classes
report["registered_after_re_enable"] = sorted(c.__name__ for c in reloaded if c.is_registered)
report["load_post_after_re_enable"] = sum(1 for h in bpy.app.handlers.load_post if "id_to_3d" in h.__module__)
addon_utils.disable(module, default_set=True)
report["registered_after_second_disable"] = sorted(c.__name__ for c in reloaded if c.is_registered)
repo_index = next(i for i, repo in enumerate(bpy.context.preferences.extensions.repos) if repo.module == "user_default")
result = bpy.ops.extensions.package_uninstall(repo_index=repo_index, pkg_id=manifest()["id"])
report["uninstall_result"] = sorted(result)
report["installed_dir_exists_after_uninstall"] = Path(report["installed_dir"]).exists()
print("REPORT " + json.dumps(report))
