"""The notebook app (ipywidgets): prompt → images → upscaled, side by side, saved with metadata.

>>> import pipeline_lib as pl
>>> ui = pl.app()          # doctest: +SKIP
>>> ui                     # last expression in a cell: shows the app

``controller`` holds the state and actions (no ipywidgets; tested alone), ``view`` the widgets
wired to it, ``progress`` the one progress figure (fraction, time left) of a job. ``app`` loads
the view on first use, so ``pipeline_lib.widgets.controller`` imports without ipywidgets.
"""
__all__ = ["app"]


def __getattr__(name: str):
    if name == "app":
        from .view import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
