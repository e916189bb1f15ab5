# ---
# jupyter:
#   jupytext:
#     formats: py:percent,ipynb
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # TransformerLM Quick Start, on retrax
#
# Every code cell of Trax's "TransformerLM Quick Start and Guide" notebook,
# with `import retrax as trax` in place of `import trax`:
#
# 1. use a pre-trained TransformerLM that sorts four integers;
# 2. train a TransformerLM to reverse four integers, then load it in
#    `predict` mode and decode;
# 3. look inside the TransformerLM.
#
# Run it with `python examples/quick_start.py` (under a minute on a 2-core CPU),
# open `examples/quick_start.ipynb` (generated from this file by
# `python scripts/py_to_ipynb.py examples/quick_start.py`), or run
# `retrax quickstart` (the same cells, from `retrax.quickstart`).

# %%
import os
import time

import numpy as np

import retrax as trax

START = time.time()

# %% [markdown]
# ## Using a pre-trained TransformerLM
#
# The notebook loads `gs://ml-intro/models/sort-transformer.pkl.gz`. Most
# machines cannot reach it; retrax then falls back, with a warning, to its own
# sort model trained by `scripts/train_sort_model.py` (not Google's file).

# %%
# Create a Transformer model.
# Have to use the same configuration of the pre-trained model we'll load next
model = trax.models.TransformerLM(
    d_model=32, d_ff=128, n_layers=2,
    vocab_size=32, mode='predict')

# Initialize using pre-trained weights.
model.init_from_file('gs://ml-intro/models/sort-transformer.pkl.gz',
                     weights_only=True,
                     input_signature=trax.shapes.ShapeDtype((1, 1), dtype=np.int32))

# Input sequence
# The 0s indicate the beginning and end of the input sequence
input = [0, 3, 15, 14, 9, 0]

# Run the model
output = trax.supervised.decoding.autoregressive_sample(
    model, np.array([input]), temperature=0.0, max_length=4)

# Show us the output
print("sorted:", output)

# %% [markdown]
# ## Train a TransformerLM model to reverse a list of integers

# %%
# Create a Transformer model.
def tiny_transformer_lm(mode='train'):
    return trax.models.TransformerLM(
        d_model=32, d_ff=128, n_layers=2,
        vocab_size=32, mode=mode)


# %%
def reverse_ints_task(batch_size, length=4):
    while True:
        random_ints = np.random.randint(1, 31, (batch_size, length))
        source = random_ints

        target = np.flip(source, 1)

        zero = np.zeros([batch_size, 1], np.int32)
        x = np.concatenate([zero, source, zero, target], axis=1)

        loss_weights = np.concatenate([np.zeros((batch_size, length + 2)),
                                       np.ones((batch_size, length))], axis=1)
        yield (x, x, loss_weights)  # Here inputs and targets are the same.


np.random.seed(0)  # Not in the notebook: makes this script's run repeatable.
reverse_ints_inputs = reverse_ints_task(16)

# %%
a = reverse_ints_task(8)
sequence_batch, _, masks = next(a)
print(sequence_batch)

# %%
from retrax import layers as tl  # noqa: E402
from retrax.supervised import training  # noqa: E402

# Training task.
train_task = training.TrainTask(
    labeled_data=reverse_ints_inputs,
    loss_layer=tl.CrossEntropyLoss(),
    optimizer=trax.optimizers.Adam(0.01),
    n_steps_per_checkpoint=500,
)

# Evaluation task.
eval_task = training.EvalTask(
    labeled_data=reverse_ints_inputs,
    metrics=[tl.CrossEntropyLoss(), tl.Accuracy()],
    n_eval_batches=20  # For less variance in eval numbers.
)

output_dir = os.path.expanduser(os.environ.get('RETRAX_TRAIN_DIR', '~/train_dir/'))
# The notebook runs `!rm -f ~/train_dir/model.pkl.gz`: without it the Loop resumes.
if os.path.exists(os.path.join(output_dir, 'model.pkl.gz')):
    os.remove(os.path.join(output_dir, 'model.pkl.gz'))

# Train tiny model with Loop.
training_loop = training.Loop(
    tiny_transformer_lm(),
    train_task,
    eval_tasks=[eval_task],
    output_dir=output_dir)

# run 1000 steps (batches)
training_loop.run(1000)

# %% [markdown]
# ## Make predictions

# %%
input = np.array([[0, 4, 6, 8, 10, 0]])

# Initialize model for inference.
predict_model = tiny_transformer_lm(mode='predict')
predict_signature = trax.shapes.ShapeDtype((1, 1), dtype=np.int32)
predict_model.init_from_file(os.path.join(output_dir, "model.pkl.gz"),
                             weights_only=True, input_signature=predict_signature)

# Run the model
output = trax.supervised.decoding.autoregressive_sample(
    predict_model, input, temperature=0.0, max_length=4)

# Print the contents of output
print(output)

# %% [markdown]
# ## Looking inside the Trax TransformerLM

# %%
print(tiny_transformer_lm())

# %% [markdown]
# Layers, `n_in`/`n_out`, weights, `Serial`, `Branch`, `Residual`:

# %%
relu = tl.Relu()
x = np.array([[-2.0, -1.0, 0.0, 1.0, 2.0]])
print(relu.name, relu.n_in, relu.n_out, relu(x))

dense = tl.Dense(3)
dense.init(trax.shapes.signature(x))
w, b = dense.weights
print(dense.name, "W", w.shape, "b", b.shape)

concat = tl.Concatenate()
print(concat.name, concat.n_in, concat.n_out)

branch = tl.Branch(tl.Dense(2), tl.Dense(3))
branch.init(trax.shapes.signature(x))
print(branch, [y.shape for y in branch(x)])

residual = tl.Residual(tl.Dense(5))
residual.init(trax.shapes.signature(x))
print(residual(x).shape)

print(f"quick start finished in {time.time() - START:.1f} s")
