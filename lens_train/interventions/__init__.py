"""Counterfactual interventions: what would the model have done if this activation were different?

- :func:`intervene`: a forward pass with chosen activations (and weights, or submodules)
  replaced, logged.
- :func:`replay_with` (``log.replay_with``): the same from a replayable log's saved values,
  re-running only the ops downstream of the edits.
- :func:`patch`: activation patching (causal tracing) from a clean into a corrupt run.

Training-time edits are ``lt.Taps(..., edits=...)`` / ``taps.edit`` (:mod:`lens_train.train`).
"""

from __future__ import annotations

from .intervene import intervene, replay_with
from .patching import PatchResult, patch
from .substitution import substituted

__all__ = ["PatchResult", "intervene", "patch", "replay_with", "substituted"]
