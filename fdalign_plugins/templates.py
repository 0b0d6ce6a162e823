"""Prompt templates: plain data (``"{}"`` marks the class name).

The datasets name their templates and the prompts module builds prototypes from them;
both import the tables from here (the data layer), and :mod:`fdalign_plugins.prompts`
re-exports them.
"""

from __future__ import annotations

from typing import Dict, List

from .errors import ConfigError

__all__ = ["COOP_TEMPLATES", "IMAGENET_ENSEMBLE_TEMPLATES", "IMAGENET_TEMPLATES", "TEMPLATE_SETS",
           "resolve_templates"]

#: CLIP's 80 ImageNet templates: the FD-Align prototypes' default prompt set.
IMAGENET_TEMPLATES: List[str] = [
    'a bad photo of a {}.',
    'a photo of many {}.',
    'a sculpture of a {}.',
    'a photo of the hard to see {}.',
    'a low resolution photo of the {}.',
    'a rendering of a {}.',
    'graffiti of a {}.',
    'a bad photo of the {}.',
    'a cropped photo of the {}.',
    'a tattoo of a {}.',
    'the embroidered {}.',
    'a photo of a hard to see {}.',
    'a bright photo of a {}.',
    'a photo of a clean {}.',
    'a photo of a dirty {}.',
    'a dark photo of the {}.',
    'a drawing of a {}.',
    'a photo of my {}.',
    'the plastic {}.',
    'a photo of the cool {}.',
    'a close-up photo of a {}.',
    'a black and white photo of the {}.',
    'a painting of the {}.',
    'a painting of a {}.',
    'a pixelated photo of the {}.',
    'a sculpture of the {}.',
    'a bright photo of the {}.',
    'a cropped photo of a {}.',
    'a plastic {}.',
    'a photo of the dirty {}.',
    'a jpeg corrupted photo of a {}.',
    'a blurry photo of the {}.',
    'a photo of the {}.',
    'a good photo of the {}.',
    'a rendering of the {}.',
    'a {} in a video game.',
    'a photo of one {}.',
    'a doodle of a {}.',
    'a close-up photo of the {}.',
    'a photo of a {}.',
    'the origami {}.',
    'the {} in a video game.',
    'a sketch of a {}.',
    'a doodle of the {}.',
    'a origami {}.',
    'a low resolution photo of a {}.',
    'the toy {}.',
    'a rendition of the {}.',
    'a photo of the clean {}.',
    'a photo of a large {}.',
    'a rendition of a {}.',
    'a photo of a nice {}.',
    'a photo of a weird {}.',
    'a blurry photo of a {}.',
    'a cartoon {}.',
    'art of a {}.',
    'a sketch of the {}.',
    'a embroidered {}.',
    'a pixelated photo of a {}.',
    'itap of the {}.',
    'a jpeg corrupted photo of the {}.',
    'a good photo of a {}.',
    'a plushie {}.',
    'a photo of the nice {}.',
    'a photo of the small {}.',
    'a photo of the weird {}.',
    'the cartoon {}.',
    'art of the {}.',
    'a drawing of the {}.',
    'a photo of the large {}.',
    'a black and white photo of a {}.',
    'the plushie {}.',
    'a dark photo of a {}.',
    'itap of a {}.',
    'graffiti of the {}.',
    'a toy {}.',
    'itap of my {}.',
    'a photo of a cool {}.',
    'a photo of a small {}.',
    'a tattoo of the {}.',
]

#: The 7-template ImageNet ensemble used by Tip-Adapter and APE for ImageNet.
IMAGENET_ENSEMBLE_TEMPLATES: List[str] = [
    'itap of a {}.',
    'a bad photo of the {}.',
    'a origami {}.',
    'a photo of the large {}.',
    'a {} in a video game.',
    'art of the {}.',
    'a photo of the small {}.',
]

#: CoOp's single per-dataset template (Tip-Adapter / APE classifiers).
COOP_TEMPLATES: Dict[str, List[str]] = {
    "imagenet": IMAGENET_ENSEMBLE_TEMPLATES,
    "caltech101": ["a photo of a {}."],
    "dtd": ["{} texture."],
    "eurosat": ["a centered satellite photo of {}."],
    "fgvc_aircraft": ["a photo of a {}, a type of aircraft."],
    "food101": ["a photo of {}, a type of food."],
    "oxford_flowers": ["a photo of a {}, a type of flower."],
    "oxford_pets": ["a photo of a {}, a type of pet."],
    "stanford_cars": ["a photo of a {}."],
    "sun397": ["a photo of a {}."],
    "ucf101": ["a photo of a person doing {}."],
}

#: Named template sets selectable from configs (``templates: imagenet80``).
TEMPLATE_SETS: Dict[str, List[str]] = {
    "imagenet80": IMAGENET_TEMPLATES,
    "imagenet7": IMAGENET_ENSEMBLE_TEMPLATES,
    "photo": ["a photo of a {}."],
}


def resolve_templates(spec) -> List[str]:
    """A template list from a set name, a single template or a list of templates."""
    if isinstance(spec, str):
        if spec in TEMPLATE_SETS:
            return list(TEMPLATE_SETS[spec])
        if "{}" in spec:
            return [spec]
        raise ConfigError(f"unknown template set {spec!r}; valid: {', '.join(TEMPLATE_SETS)}, "
                          "or a template with '{}'")
    out = list(spec)
    bad = [t for t in out if "{}" not in t]
    if not out or bad:
        raise ConfigError(f"every template needs a '{{}}' slot for the class name; bad: {bad[:3] or '(empty list)'}")
    return out
