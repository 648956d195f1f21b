"""Apple ARKit's 52 face blendshapes: the names exactly as ARKit spells them, each with a prompt.

The names are the Swift names of ``ARFaceAnchor.BlendShapeLocation``'s constants (lowerCamelCase,
``eyeBlinkLeft``; "Left"/"Right" meaning the person's own left and right), which is how ARKit rigs
and Live Link Face (in UpperCamelCase) name them. The constants' raw string values, which a device
reports, are spelled differently (``eyeBlink_L``, ``mouthUpperUp_R``); the Live Link Face importer
accepts both. A head generated with this set has one shape key per name, so anything that speaks
ARKit (Live Link Face recordings, game engines' ARKit face rigs) drives it by name.

Not every shape means the same on a generated head as on an ARKit rig (docs/blender.md, ARKit 52):
the eight eyeLook* shapes cannot turn a painted iris (every expression shares one texture), there
is no tongue for tongueOut, and mouthClose is stored as a corrective on jawOpen
(``engine.result_format.CORRECTIVES``). The name is not a good text for the prior ("jawOpen"), so each comes with a
short description of what the face does; the prompt is what the engine conditions on
(job.json ``expression_prompts``), the name is what the shape key is called.

No bpy here: the Expressions panel and the Live Link Face importer both read this table.
"""

from __future__ import annotations

# (name, prompt) in ARKit's documentation order: eyes, jaw, mouth, brows, cheeks, nose, tongue.
ARKIT_52: tuple[tuple[str, str], ...] = (
    ("eyeBlinkLeft", "left eye closed, right eye open"),
    ("eyeLookDownLeft", "left eye looking down"),
    ("eyeLookInLeft", "left eye looking inward, toward the nose"),
    ("eyeLookOutLeft", "left eye looking outward, to the side"),
    ("eyeLookUpLeft", "left eye looking up"),
    ("eyeSquintLeft", "left eye squinting, lower eyelid raised"),
    ("eyeWideLeft", "left eye opened wide, upper eyelid raised"),
    ("eyeBlinkRight", "right eye closed, left eye open"),
    ("eyeLookDownRight", "right eye looking down"),
    ("eyeLookInRight", "right eye looking inward, toward the nose"),
    ("eyeLookOutRight", "right eye looking outward, to the side"),
    ("eyeLookUpRight", "right eye looking up"),
    ("eyeSquintRight", "right eye squinting, lower eyelid raised"),
    ("eyeWideRight", "right eye opened wide, upper eyelid raised"),
    ("jawForward", "jaw pushed forward, lower teeth in front of the upper teeth"),
    ("jawLeft", "jaw shifted to the left"),
    ("jawRight", "jaw shifted to the right"),
    ("jawOpen", "mouth wide open, jaw dropped"),
    ("mouthClose", "lips closed while the jaw hangs open"),
    ("mouthFunnel", "lips pushed out in a round O shape"),
    ("mouthPucker", "lips puckered tight as for a kiss"),
    ("mouthLeft", "closed lips pulled to the left"),
    ("mouthRight", "closed lips pulled to the right"),
    ("mouthSmileLeft", "left corner of the mouth raised in a half smile"),
    ("mouthSmileRight", "right corner of the mouth raised in a half smile"),
    ("mouthFrownLeft", "left corner of the mouth pulled down"),
    ("mouthFrownRight", "right corner of the mouth pulled down"),
    ("mouthDimpleLeft", "left corner of the mouth pulled back, dimple in the left cheek"),
    ("mouthDimpleRight", "right corner of the mouth pulled back, dimple in the right cheek"),
    ("mouthStretchLeft", "left corner of the mouth stretched sideways and down"),
    ("mouthStretchRight", "right corner of the mouth stretched sideways and down"),
    ("mouthRollLower", "lower lip rolled in over the lower teeth"),
    ("mouthRollUpper", "upper lip rolled in over the upper teeth"),
    ("mouthShrugLower", "lower lip pushed up, chin raised"),
    ("mouthShrugUpper", "upper lip pushed up"),
    ("mouthPressLeft", "lips pressed together on the left side"),
    ("mouthPressRight", "lips pressed together on the right side"),
    ("mouthLowerDownLeft", "lower lip pulled down on the left, lower teeth showing"),
    ("mouthLowerDownRight", "lower lip pulled down on the right, lower teeth showing"),
    ("mouthUpperUpLeft", "upper lip raised on the left, upper teeth showing"),
    ("mouthUpperUpRight", "upper lip raised on the right, upper teeth showing"),
    ("browDownLeft", "left eyebrow lowered"),
    ("browDownRight", "right eyebrow lowered"),
    ("browInnerUp", "inner ends of both eyebrows raised, a worried look"),
    ("browOuterUpLeft", "outer end of the left eyebrow raised"),
    ("browOuterUpRight", "outer end of the right eyebrow raised"),
    ("cheekPuff", "both cheeks puffed out with air"),
    ("cheekSquintLeft", "left cheek raised up under the eye"),
    ("cheekSquintRight", "right cheek raised up under the eye"),
    ("noseSneerLeft", "nose wrinkled up on the left side in a sneer"),
    ("noseSneerRight", "nose wrinkled up on the right side in a sneer"),
    ("tongueOut", "tongue sticking out of the mouth"),
)

ARKIT_NAMES: tuple[str, ...] = tuple(name for name, _ in ARKIT_52)
