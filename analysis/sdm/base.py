"""Parameters of the engine's estimators and transformers (scikit-learn / NiMARE conventions).

``__init__`` only stores its arguments as attributes of the same names; :meth:`get_params`,
:meth:`set_params` and a ``repr`` showing the parameters that differ from the defaults come from
:class:`ParamsMixin`; checks happen in ``fit`` / ``transform``. The semantics are
scikit-learn's (Buitinck et al. 2013), which NiMARE's estimators share (Salo et al. 2023):
``get_params(deep=True)`` also lists the parameters of parameters that are themselves
estimators as ``<name>__<parameter>``, ``set_params`` accepts the same keys, and
``sklearn.base.clone`` therefore builds an unfitted copy with the same parameters.
Attributes learnt from data end with ``_`` and are not parameters.

References
----------
Buitinck L, Louppe G, Blondel M, et al. (2013). API design for machine learning software:
experiences from the scikit-learn project. ECML PKDD Workshop: Languages for Data Mining and
Machine Learning, 108-122. arXiv:1309.0238.
Salo T, Yarkoni T, Nichols TE, et al. (2023). NiMARE: Neuroimaging Meta-Analysis Research
Environment. Aperture Neuro 3. doi:10.52294/001c.87681.
"""

from __future__ import annotations

import inspect
from collections import defaultdict

import numpy as np


class ParamsMixin:
    """``get_params``, ``set_params`` and a short ``repr`` from the ``__init__`` signature."""

    @classmethod
    def _param_names(cls) -> tuple[str, ...]:
        return tuple(k for k in inspect.signature(cls.__init__).parameters if k != "self")

    def get_params(self, deep: bool = True) -> dict:
        """The constructor's parameters.

        Parameters
        ----------
        deep : bool
            Also return the parameters of parameters that are estimators (objects with
            ``get_params``, not classes), as ``<name>__<parameter>`` (scikit-learn's rule).

        Returns
        -------
        dict
            Parameter name -> value.
        """
        out = {}
        for key in self._param_names():
            value = getattr(self, key)
            if deep and hasattr(value, "get_params") and not isinstance(value, type):
                out.update((f"{key}__{k}", v) for k, v in value.get_params(deep=True).items())
            out[key] = value
        return out

    def set_params(self, **params):
        """Set constructor parameters, also nested ones (``<name>__<parameter>``).

        Parameters
        ----------
        **params
            Parameter name -> new value.

        Returns
        -------
        self

        Raises
        ------
        ValueError
            A name that is not a parameter (the valid names are listed).
        """
        if not params:
            return self
        names = self._param_names()
        nested = defaultdict(dict)
        for key, value in params.items():
            key, delim, sub = key.partition("__")
            if key not in names:
                raise ValueError(f"invalid parameter {key!r} for {type(self).__name__}; "
                                 f"valid: {names}")
            if delim:
                nested[key][sub] = value
            else:
                setattr(self, key, value)
        for key, sub in nested.items():
            target = getattr(self, key)
            if not hasattr(target, "set_params"):
                raise ValueError(f"parameter {key!r} of {type(self).__name__} has no "
                                 f"parameters of its own (got {sorted(sub)})")
            target.set_params(**sub)
        return self

    def _parameter_copy(self):
        """A new, unfitted object with the same parameters (values shared, not copied).

        What a result keeps of the estimator or transformer that produced it: unlike
        ``copy.copy(self)`` it carries no fitted attribute (no earlier result).
        """
        return type(self)(**self.get_params(deep=False))

    def __repr__(self) -> str:
        """The parameters that differ from the defaults."""
        defaults = {k: v.default for k, v in
                    inspect.signature(type(self).__init__).parameters.items()}
        shown = []
        for k, v in self.get_params(deep=False).items():
            if isinstance(v, np.ndarray):
                shown.append(f"{k}=<array {v.shape}>")
            elif v is not defaults.get(k) and v != defaults.get(k):
                shown.append(f"{k}={v!r}")
        return f"{type(self).__name__}({', '.join(shown)})"
