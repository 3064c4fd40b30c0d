"""Fitting GPU efficiency profiles to measurements (``kavier calibrate``).

``layouts`` reads measurement files (four documented CSV layouts) into
:class:`~kavier_opendc.calibration.layouts.Observation` records; ``fit``
turns observations of one GPU into a :class:`~kavier_opendc.specs.profiles.GPUProfile`
and reports the error of its predictions per source. Imports only ``specs``
and ``errors``: what is fitted is the formula the engine runs
(``specs.profiles.IterationTimer``).
"""
