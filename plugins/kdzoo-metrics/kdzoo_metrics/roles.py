"""Which models a metric reports on, and under which key: the public API's scheme
(:mod:`kdzoo.api.keys`, :func:`kdzoo.api.role_pairs`), re-exported for this package."""

from kdzoo.api import ENSEMBLE, pair_key, role_key, role_logits, role_pairs, student_role

__all__ = ["ENSEMBLE", "pair_key", "role_key", "role_logits", "role_pairs", "student_role"]
