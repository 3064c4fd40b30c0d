"""Fitting GPU efficiency profiles to measurements (``kavier calibrate``).

``layouts`` reads measurement files (seven documented CSV layouts) into
:class:`~kavier_opendc.calibration.layouts.Observation` records; ``fit``
turns observations of one GPU into a :class:`~kavier_opendc.specs.profiles.GPUProfile`
and reports the error of its predictions per source; ``frameworks`` and
``load_sweep`` fit a serving framework's CPU time with the GPU profiles held
fixed (the latter by simulating each load point with the engine). What is
fitted is the formula the engine runs (``specs.profiles.IterationTimer``).
"""
