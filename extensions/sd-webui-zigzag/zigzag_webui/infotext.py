"""Infotext entries of the Zigzag settings and the notes shown to the user (also in the HTTP API's ``info``)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from .settings import _FIELDS, SETTINGS, ZigzagSettings

logger = logging.getLogger("sd-webui-zigzag")


def infotext_params(settings: ZigzagSettings) -> dict[str, Any]:
    """Infotext entries (``p.extra_generation_params``) for every non-default setting."""
    params = {}
    for setting in SETTINGS:
        value = getattr(settings, _FIELDS[setting.key])
        if value != setting.default:
            params[setting.infotext] = value
    return params


def fill_infotext_defaults(params: dict[str, Any], sampler_names: Iterable[str]) -> None:
    """``on_infotext_pasted`` callback body: an infotext made with a zigzag sampler that lacks a
    zigzag entry had that setting at its default, so paste the default (the webui then overrides
    the current setting only if it differs)."""
    names = set(sampler_names)
    if params.get("Sampler") not in names and params.get("Hires sampler") not in names:
        return
    for setting in SETTINGS:
        params.setdefault(setting.infotext, str(setting.default))


NOTE_INFOTEXT = "Zigzag note"
"""Infotext key of the notes' short markers (the HTTP API's ``info`` carries the infotext, not the comments)."""


def record_infotext(p: Any, settings: ZigzagSettings) -> None:
    """Write the full current state of our infotext entries into ``p.extra_generation_params``.

    The X/Y/Z grid makes each cell with a shallow ``copy(p)``, so all cells share one dict: set every
    non-default setting, remove those back at their default, and drop the note markers of another
    generation (a cell is a new ``p`` object; the hires pass and batch iterations reuse the same ``p``
    and keep the markers of its first pass).
    """
    params = getattr(p, "extra_generation_params", None)
    if not isinstance(params, dict):
        return
    current = infotext_params(settings)
    for setting in SETTINGS:
        if setting.infotext in current:
            params[setting.infotext] = current[setting.infotext]
        else:
            params.pop(setting.infotext, None)
    if getattr(p, NOTES_OWNER, None) != id(p):
        params.pop(NOTE_INFOTEXT, None)
        setattr(p, NOTES_OWNER, id(p))


def forget_infotext(p: Any) -> None:
    """At the start of every generation, whatever its sampler (the extension's ``process`` script hook):
    drop our entries and note markers that another X/Y/Z cell left in the shared dict (a zigzag sampler
    writes its own again, :func:`record_infotext`)."""
    params = getattr(p, "extra_generation_params", None)
    if not isinstance(params, dict):
        return
    for setting in SETTINGS:
        params.pop(setting.infotext, None)
    params.pop(NOTE_INFOTEXT, None)
    setattr(p, NOTES_OWNER, id(p))


NOTES_OWNER = "zigzag_notes_of"
"""Attribute of ``p``: ``id(p)`` of the generation whose markers ``p.extra_generation_params`` holds
(a shallow copy inherits another object's id, so its first zigzag call starts fresh)."""


def notify(p: Any, message: str, marker: str) -> None:
    """Tell the user once per generation: a comment under the image (``p.comment``), the log, and a
    short stable ``marker`` in the infotext (``Zigzag note: <marker>; <marker>``)."""
    params = getattr(p, "extra_generation_params", None)
    if isinstance(params, dict):
        markers = [m for m in str(params.get(NOTE_INFOTEXT) or "").split("; ") if m]
        if marker not in markers:
            params[NOTE_INFOTEXT] = "; ".join([*markers, marker])
    text = f"Zigzag: {message}"
    comments = getattr(p, "comments", None)
    if isinstance(comments, dict) and text in comments:
        return
    logger.warning(text)
    if hasattr(p, "comment"):
        p.comment(text)
