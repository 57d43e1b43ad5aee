"""Measuring models: pure metric functions (``metrics``), the evaluation engine for any labelled set
(``engine``; its HTML report in ``html_report``), and the phantom-set benchmark built on it (``phantom_eval``,
exported as labelled sets by ``phantom_export``)."""
