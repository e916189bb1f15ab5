"""Builds a small model out of layers, runs it, and prints its layer tree."""

import numpy as np

import retrax as trax
from retrax import layers as tl

model = tl.Serial(
    tl.Dense(8),
    tl.Relu(),
    tl.Branch(tl.Dense(4), None),  # two outputs: Dense(x) and x itself
    tl.Concatenate(),
    tl.Dense(3),
    tl.LogSoftmax(),
)
x = np.arange(10, dtype=np.float32).reshape(2, 5) / 10
model.init(trax.shapes.signature(x))
print(model)
print("output shape:", model(x).shape)
print("probabilities sum to", np.exp(model(x)).sum(axis=-1))
