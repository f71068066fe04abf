"""The closed forms: each rule's hand-written Jacobian (and its structured twin, an operator
from ``matcalc_jax.operators``), pure math with no fixtures. Public through
``matcalc_jax``; ``matcalc_jax.forms.activations`` holds the one implementation of each
activation derivative (sigma', tanh', ...) that the forms, ``matcalc_jax.nn`` and the
catalogue share."""
