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
:mod:`retrax.data.packing`, :mod:`retrax.data.sources`,
:mod:`retrax.data.tokenizers`, :mod:`retrax.data.mixing` (``Parallel``),
:mod:`retrax.data.counters` (``CountAndSkip``), :mod:`retrax.data.prefetch`,
:mod:`retrax.data.chunking` and :mod:`retrax.data.masking` (``PrefixLM``,
``MLM``), :mod:`retrax.data.synthetic` (Trax's toy ``Inputs``).
"""

from retrax.data import inputs  # noqa: F401  (Trax's module path: data.inputs.data_counters)
from retrax.data.batching import (  # noqa: F401
    Batch,
    BucketByLength,
    UnBatch,
    batch,
    bucket_by_length,
    pad_to_max_dims,
)
from retrax.data.bundle import Inputs  # noqa: F401
from retrax.data.chunking import PrefixLM, generate_sequential_chunks  # noqa: F401
from retrax.data.counters import CountAndSkip, UniformlySeek, count_and_skip  # noqa: F401
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
    TruncateToLength,
    add_loss_weights,
)
from retrax.data.masking import (  # noqa: F401
    MLM,
    consume_noise_mask,
    generate_random_noise_mask,
    random_spans_noise_mask,
)
from retrax.data.mixing import Parallel  # noqa: F401
from retrax.data.packing import PackSequences  # noqa: F401
from retrax.data.prefetch import Prefetch  # noqa: F401
from retrax.data.sentencepiece_inputs import (  # noqa: F401
    SentencePieceTokenize,
    sentencepiece_tokenize,
)
from retrax.data.shuffle import Shuffle, shuffle  # noqa: F401
from retrax.data.sources import TFDS, HFDataset, TextDocuments, TextLines  # noqa: F401
from retrax.data.stream import EmptyStreamError, Serial, Stream  # noqa: F401
from retrax.data.synthetic import (  # noqa: F401
    addition_inputs,
    random_inputs,
    sequence_copy_inputs,
    simple_sequence_copy_inputs,
    sine_inputs,
)
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
