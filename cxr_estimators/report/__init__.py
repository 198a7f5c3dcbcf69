"""Reports: the text :func:`clinical_report` and the one-page HTML evaluation report.

``_clinical`` holds :func:`clinical_report` (imported by users from
:mod:`cxr_estimators.metrics`), ``_findings`` its per-finding form for multilabel targets
(:class:`~cxr_estimators.report._findings.FindingsReport`); ``_page`` writes the HTML page and its JSON twin
(:func:`cxr_estimators.evaluation.report`) from the small section functions of
``_sections`` (one set per finding of a multi-label model: ``_multilabel``) and the
figures of :mod:`cxr_estimators.plotting`. Only ``_clinical`` is
imported here: the page needs :mod:`cxr_estimators.metrics`, which imports ``_clinical``.
"""

from ._clinical import ClinicalReport, MetricEstimate, clinical_report

__all__ = ["ClinicalReport", "MetricEstimate", "clinical_report"]
