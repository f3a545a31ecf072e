"""The error of a pretraining run: what every part of it (run folder, data, model, views,
the loop) raises when the run cannot start or continue; the message says what to do."""

from __future__ import annotations

from radengine.errors import UserError

__all__ = ["PretrainError"]


class PretrainError(UserError, RuntimeError):
    """A pretraining run that cannot start or continue; the message says what to do."""
