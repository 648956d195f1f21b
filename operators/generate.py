"""Generate Head (modal in the UI, blocking in EXEC mode for scripts), Cancel, Resume, Import Head Result.

The work of a timer tick lives in :meth:`generation.Launch.pump` (while the engine's Python is
probed) and then :meth:`generation.Job.pump`; the modal operator only calls them and redraws. ``bpy.ops.idto3d.generate_head()`` from a script (EXEC) blocks until the head is in
the scene, which is what ``blender -b --python`` and farms need.
"""

from __future__ import annotations

from pathlib import Path

import bpy
from bpy.props import BoolProperty, StringProperty

from . import redraw_3d_views
from .. import generation, placement, result_import
from ..engine.result_format import ResultFormatError

TIMER_INTERVAL_S = 0.25


def _report_end(operator, job: generation.Job) -> set[str]:
    if job.ok:
        operator.report({"INFO"}, f"Head generated: {job.object_name} ({job.job_dir})")
        return {"FINISHED"}
    if job.cancelled:
        operator.report({"WARNING"}, "Generation cancelled; the job folder stays for a resume")
        return {"CANCELLED"}
    error = job.error or {}
    text = error.get("message", "the engine failed")
    if error.get("hint"):
        text += f" Fix: {error['hint']}"
    operator.report({"ERROR"}, text)
    return {"CANCELLED"}


class _JobOperator:
    """Shared by Generate Head and Resume: start, then follow (modal) or wait (EXEC).

    INVOKE (a press in the UI) never waits: the engine's Python is probed in the background
    (:class:`generation.Launch`) and the modal timer starts the job once the probe passed.
    """

    resume = False

    def _begin(self, context):
        runtime = context.window_manager.idto3d_runtime
        try:
            launch = generation.begin_job(context, resume=self.resume)
        except generation.Refusal as exc:
            self._refused(runtime, exc)
            return None
        return launch

    def _refused(self, runtime, exc: generation.Refusal) -> None:
        runtime.offer_download = exc.offer_download
        self.report({"ERROR"}, exc.message)

    def _started(self, context, job: generation.Job) -> None:
        """The worker runs: say where the head goes and show that place in the 3D views."""
        context.window_manager.idto3d_runtime.offer_download = False
        if job.placement_note:
            self.report({"WARNING"}, job.placement_note)
        placement.frame_in_views(context.window_manager, job.location)

    def execute(self, context):
        launch = self._begin(context)
        if launch is None:
            return {"CANCELLED"}
        try:
            job = launch.wait()
        except generation.Refusal as exc:
            self._refused(context.window_manager.idto3d_runtime, exc)
            return {"CANCELLED"}
        self._started(context, job)
        generation.wait(job)
        return _report_end(self, job)

    def invoke(self, context, event):
        launch = self._begin(context)
        if launch is None:
            return {"CANCELLED"}
        self._scene_name = context.scene.name
        self._launch = launch
        launch.timer = context.window_manager.event_timer_add(TIMER_INTERVAL_S, window=context.window)
        context.window_manager.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        launch = getattr(self, "_launch", None)
        if launch is not None:  # still probing the engine's Python
            if generation.launch_for(self._scene_name) is not launch:  # the add-on was disabled, a file loaded
                generation.end_launch(launch)
                return {"CANCELLED"}
            try:
                job = launch.pump()
            except Exception as exc:  # the launch is over (Launch.pump stopped it): never leave its timer behind
                generation.end_launch(launch)
                self._launch = None
                if isinstance(exc, generation.Refusal):
                    self._refused(context.window_manager.idto3d_runtime, exc)
                else:
                    self.report({"ERROR"}, f"Generate Head could not start the engine: {exc}")
                redraw_3d_views(context.window_manager)
                return {"CANCELLED"}
            if job is None:
                return {"PASS_THROUGH"}
            job.timer, launch.timer, self._launch = launch.timer, None, None
            self._started(context, job)
            redraw_3d_views(context.window_manager)
            return {"PASS_THROUGH"}  # the worker's first messages come with the next tick
        job = generation._jobs.get(getattr(self, "_scene_name", ""))
        if job is None:  # the add-on was disabled or a file loaded: the job is gone
            return {"CANCELLED"}
        running = job.pump()
        redraw_3d_views(context.window_manager)
        if running:
            return {"PASS_THROUGH"}
        self._remove_timer(context, job)
        return _report_end(self, job)

    def cancel(self, context):
        """Blender ends the modal operator (a file is loaded, its window closes): nothing would
        pump the press or the job again, so both end here (the job as cancelled, its worker asked
        to stop with a checkpoint) and the Generate button comes back."""
        launch = getattr(self, "_launch", None)
        if launch is not None:
            generation.end_launch(launch)
            self._launch = None
        job = generation._jobs.get(getattr(self, "_scene_name", ""))
        if job is not None:
            job.abandon()

    @staticmethod
    def _remove_timer(context, owner) -> None:
        if owner.timer is not None:
            context.window_manager.event_timer_remove(owner.timer)
            owner.timer = None


class IDTO3D_OT_generate_head(_JobOperator, bpy.types.Operator):
    bl_idname = "idto3d.generate_head"
    bl_label = "Generate Head"
    bl_description = (
        "Generate the head from the photos and expressions in a background process; "
        "the head streams into the viewport while it optimises"
    )


class IDTO3D_OT_resume_head(_JobOperator, bpy.types.Operator):
    bl_idname = "idto3d.resume_head"
    bl_label = "Resume"
    bl_description = "Continue the last job of this scene from its newest checkpoint"
    resume = True

    @classmethod
    def poll(cls, context):
        job = generation.job_for(context.scene)
        return job is not None and job.can_resume


class IDTO3D_OT_cancel_head(bpy.types.Operator):
    bl_idname = "idto3d.cancel_head"
    bl_label = "Cancel"
    bl_description = "Stop the running generation (its job folder stays, so it can be resumed)"

    @classmethod
    def poll(cls, context):
        return generation.running_job(context.scene) is not None

    def execute(self, context):
        generation.running_job(context.scene).cancel()
        return {"FINISHED"}


class IDTO3D_OT_import_head_result(bpy.types.Operator):
    bl_idname = "idto3d.import_head_result"
    bl_label = "Import Head Result"
    bl_description = (
        "Bring a result folder (head.npz + textures) or a .glb written by the engine into the scene"
    )
    bl_options = {"REGISTER", "UNDO"}

    filepath: StringProperty(subtype="FILE_PATH", options={"SKIP_SAVE"})
    directory: StringProperty(subtype="DIR_PATH", options={"SKIP_SAVE"})
    filter_glob: StringProperty(default="*.glb;*.npz", options={"HIDDEN"})
    filter_folder: BoolProperty(default=True, options={"HIDDEN", "SKIP_SAVE"})

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        chosen = Path(bpy.path.abspath(self.filepath or self.directory))
        scene = context.scene
        location, note = placement.place_head(scene, scene.cursor.location,
                                              beside=scene.idto3d.placement == "BESIDE",
                                              view_layer=context.view_layer, window_manager=context.window_manager)
        try:
            if chosen.suffix.lower() == ".glb":
                obj = result_import.import_glb(chosen, location=location)
            else:
                folder = chosen.parent if chosen.is_file() else chosen
                obj = result_import.import_result(folder, location=location)
        except ResultFormatError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        for other in context.view_layer.objects:
            other.select_set(False)
        obj.select_set(True)
        context.view_layer.objects.active = obj
        context.view_layer.update()  # the new object's world matrix
        low, high = placement.world_bounds(obj)
        placement.frame_in_views(context.window_manager, (low + high) / 2, max(high - low) / 2)
        self.report({"WARNING"} if note else {"INFO"}, note or f"Imported {obj.name}")
        return {"FINISHED"}


CLASSES = (
    IDTO3D_OT_generate_head,
    IDTO3D_OT_resume_head,
    IDTO3D_OT_cancel_head,
    IDTO3D_OT_import_head_result,
)
