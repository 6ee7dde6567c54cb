"""Exception hierarchy: every user-facing problem is a :class:`CdtBayesError`."""

from __future__ import annotations


class CdtBayesError(ValueError):
    """Base class of all errors raised on bad user input.

    The message names the file or option and the problem, in one line, so that the
    CLI can print it verbatim (``cdt-bayes: error: <message>``).
    """


class MeshError(CdtBayesError):
    """A mesh file is missing, unreadable or invalid (NaN, inverted/degenerate tets, ...)."""


class InputFileError(CdtBayesError):
    """A CSV/ECG/PMJ/electrode input file is missing, empty or malformed."""


class SpecError(CdtBayesError):
    """A model specification (``models/*.toml``) is invalid."""
