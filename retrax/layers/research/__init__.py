"""Trax's ``trax.layers.research`` module paths: modules that hold, under Trax 1.4.1's
names, layers defined elsewhere in ``retrax.layers`` (each concept has its own module
there). Import the layers as ``tl.X``; these paths exist for programs that import Trax's
modules (``from trax.layers.research import position_encodings``)."""
