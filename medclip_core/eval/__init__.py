"""Measuring models: pure metric functions (``metrics``) and the phantom-set benchmark (``phantom_eval``)."""
