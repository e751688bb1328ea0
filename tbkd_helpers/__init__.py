"""tbkd_helpers: every piece of logic behind the tbkd notebooks.

Notebooks import the package under one short name and reach the rooms through it::

    import tbkd_helpers as tk
    profile = tk.config.get_profile("quick")
    prep = tk.data.prepare(profile)

Submodules are imported on first use, so ``import tbkd_helpers`` is cheap.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"
_SUBMODULES = ("config", "store", "data", "phantom", "segmentation", "models", "train", "cam",
               "distill", "metrics", "viz", "widgets", "cli", "notebooks", "results", "pipeline", "reports", "recipes",
               "weights", "screen", "parallel")
__all__ = list(_SUBMODULES)


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _text_progress_bars() -> None:
    """Headless runs (``make reproduce``) set ``TBKD_PROGRESS=text``: progress bars are then
    plain text on stderr, which papermill streams to the terminal, instead of notebook
    widgets that a headless run cannot show."""
    import os

    mode = os.environ.get("TBKD_PROGRESS")
    if mode in ("text", "off"):
        import tqdm.auto
        import tqdm.std

        if mode == "text":
            tqdm.auto.tqdm = tqdm.std.tqdm
        else:  # notebook regression runs: thousands of bar updates drown nbval's output reader

            class _Silent(tqdm.std.tqdm):
                def __init__(self, *args, **kwargs):
                    kwargs["disable"] = True
                    super().__init__(*args, **kwargs)

            tqdm.auto.tqdm = _Silent


_text_progress_bars()
