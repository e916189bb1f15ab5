"""Input pipelines and toy tasks (``trax.data``)."""

from retrax.data.tasks import (  # noqa: F401
    copy_ints_task,
    reverse_ints_task,
    sequence_task,
    sort_ints_task,
)
