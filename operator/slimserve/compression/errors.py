"""Errors of a compression run, each with the reason the CompressionJob's status reports."""

from __future__ import annotations

from slimserve.artifacts.errors import SlimServeError


class SpecDoesNotFit(SlimServeError):
    """The spec asks for something this model or data cannot do (the message names the field)."""

    reason = "InvalidSpec"


class BudgetExceeded(SlimServeError):
    """No candidate of a step kept the metric within evaluation.maxDrop."""

    reason = "AccuracyBudgetExceeded"
