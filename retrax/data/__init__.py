"""Input pipelines, tokenizers and toy tasks (``trax.data``).

A pipeline is ``data.Serial(source, stage, stage, ...)``; calling it gives a
resumable stream of examples or batches that ``TrainTask``/``EvalTask`` take
as ``labeled_data``. A language model on text files::

    tok = data.ByteTokenizer()
    pipeline = data.Serial(
        data.TextDocuments('corpus/**/*.txt', repeat=True, shuffle_files=True),
        data.Tokenize(tokenizer=tok),
        data.PackSequences(128),            # rows of 128 tokens, EOS between documents
        data.Shuffle(1024),
        data.Batch(16),
        data.ConcatenateToLMInput(),        # x -> (x, x)
        data.AddLossWeights(id_to_mask=0),  # -> (x, x, weights), padding masked
    )
    train_task = training.TrainTask(pipeline(), tl.CrossEntropyLoss(), trax.optimizers.Adam(1e-3))

See :mod:`retrax.data.stream` (Serial, positions, counters),
:mod:`retrax.data.inputs` and :mod:`retrax.data.batching` (stages),
:mod:`retrax.data.packing`, :mod:`retrax.data.sources` and
:mod:`retrax.data.tokenizers`.
"""

from retrax.data.batching import (  # noqa: F401
    Batch,
    BucketByLength,
    UnBatch,
    batch,
    pad_to_max_dims,
)
from retrax.data.inputs import (  # noqa: F401
    AddLossWeights,
    AppendValue,
    CastTo,
    ConcatenateToLMInput,
    Dup,
    FilterByLength,
    FilterEmptyExamples,
    Log,
    PadToLength,
    Shuffle,
    TruncateToLength,
    add_loss_weights,
    shuffle,
)
from retrax.data.packing import PackSequences  # noqa: F401
from retrax.data.sources import TFDS, HFDataset, TextDocuments, TextLines  # noqa: F401
from retrax.data.stream import EmptyStreamError, Serial, Stream  # noqa: F401
from retrax.data.tasks import (  # noqa: F401
    copy_ints_task,
    reverse_ints_task,
    sequence_task,
    sort_ints_task,
)
from retrax.data.text_lm import (  # noqa: F401
    corpus_files,
    make_tokenizer,
    split_by_hash,
    stdlib_files,
    text_lm_batches,
)
from retrax.data.tokenizers import (  # noqa: F401
    ByteTokenizer,
    CharTokenizer,
    Detokenize,
    SentencePieceTokenizer,
    SubwordTokenizer,
    Tokenize,
    Tokenizer,
    detokenize,
    get_tokenizer,
    load_tokenizer,
    tokenize,
    vocab_size,
)
