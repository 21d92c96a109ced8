"""Parameters of the engine's estimators and transformers (scikit-learn / nilearn conventions).

``__init__`` only stores its arguments as attributes of the same names; :meth:`get_params`,
:meth:`set_params` and a ``repr`` showing the parameters that differ from the defaults come from
:class:`ParamsMixin`; checks happen in ``fit`` / ``transform``.
"""

from __future__ import annotations

import inspect

import numpy as np


class ParamsMixin:
    """``get_params``, ``set_params`` and a short ``repr`` from the ``__init__`` signature."""

    @classmethod
    def _param_names(cls) -> tuple[str, ...]:
        return tuple(k for k in inspect.signature(cls.__init__).parameters if k != "self")

    def get_params(self) -> dict:
        """The constructor's parameters."""
        return {k: getattr(self, k) for k in self._param_names()}

    def set_params(self, **params):
        """Set constructor parameters; returns the object."""
        names = self._param_names()
        for key, value in params.items():
            if key not in names:
                raise ValueError(f"invalid parameter {key!r} for {type(self).__name__}; "
                                 f"valid: {names}")
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        """The parameters that differ from the defaults."""
        defaults = {k: v.default for k, v in
                    inspect.signature(type(self).__init__).parameters.items()}
        shown = []
        for k, v in self.get_params().items():
            if isinstance(v, np.ndarray):
                shown.append(f"{k}=<array {v.shape}>")
            elif v is not defaults.get(k) and v != defaults.get(k):
                shown.append(f"{k}={v!r}")
        return f"{type(self).__name__}({', '.join(shown)})"
