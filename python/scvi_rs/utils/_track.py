"""``track``: progress bar over an iterable (the reference's ``scvi.utils.track``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def track(
    sequence: Iterable,
    description: str = "Working...",
    disable: bool = False,
    style: str | None = None,
    **kwargs: Any,
) -> Iterable:
    """Iterate over ``sequence`` with a tqdm progress bar.

    Parameters
    ----------
    sequence
        Iterable to wrap.
    description
        Text shown beside the bar.
    disable
        Return ``sequence`` untouched.
    style
        ``"tqdm"`` or ``"rich"`` (both render with tqdm); defaults to
        ``scvi_rs.settings.progress_bar_style``.
    **kwargs
        Passed to ``tqdm``.
    """
    from .._settings import settings

    if style is None:
        style = settings.progress_bar_style
    if style not in ("tqdm", "rich"):
        raise ValueError("style must be one of ['tqdm', 'rich']")
    if disable:
        return sequence
    from tqdm.auto import tqdm

    return tqdm(sequence, desc=description, **kwargs)
