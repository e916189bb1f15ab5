"""Training history: ``(step, value)`` pairs per mode and metric (Trax's ``History``).

>>> h = History()
>>> h.append('train', 'metrics/loss', 1, 3.5)
>>> h.get('train', 'metrics/loss')
[(1, 3.5)]
>>> History.from_dict(h.to_dict()).modes
['train']
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["History"]


class History:
    """Values of metrics over steps, grouped by mode (``'train'``, ``'eval'``)."""

    def __init__(self) -> None:
        self._values: dict[str, dict[str, list[tuple[int, float]]]] = {}

    def append(self, mode: str, metric: str, step: int, value: Any) -> None:
        self._values.setdefault(mode, {}).setdefault(metric, []).append((int(step), float(value)))

    def get(self, mode: str, metric: str) -> list[tuple[int, float]]:
        """The ``(step, value)`` pairs of ``metric`` in ``mode``; ``[]`` when none were
        recorded (as Trax: an unknown mode or metric is not an error). ``modes`` and
        ``metrics_for_mode`` list what was recorded."""
        return list(self._values.get(mode, {}).get(metric, []))

    @property
    def modes(self) -> list[str]:
        return sorted(self._values)

    def metrics_for_mode(self, mode: str) -> list[str]:
        return sorted(self._values.get(mode, {}))

    def to_dict(self) -> dict[str, Any]:
        return {"_values": copy.deepcopy(self._values)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        h = cls()
        values = d.get("_values", d) if isinstance(d, dict) else {}
        for mode, metrics in values.items():
            for metric, pairs in metrics.items():
                for step, value in pairs:
                    h.append(mode, metric, step, value)
        return h

    def __repr__(self) -> str:
        return f"History({self.to_dict()['_values']})"
