"""The embedded default corpus: CPython's language reference, `pydoc_data.topics`.

Every CPython install ships ~0.5 MB of English reference text (79 topics in 3.11) as
`pydoc_data.topics.topics`, so a run needs no download and no network. `PydocTopics` exposes it as
a TFDS builder like any other (registered as `pydoc_topics`; one config per Python version, since
the text changes between releases): one example per topic, `{"title", "text"}`, split
deterministically into `train` and a small `validation` split (every 16th topic by name).
"""

from __future__ import annotations

import sys

import tensorflow_datasets as tfds

VALIDATION_EVERY = 16


def topics() -> dict[str, str]:
    """Returns `{topic: text}` from `pydoc_data.topics`, sorted by topic."""
    from pydoc_data import topics as pydoc_topics

    return dict(sorted(pydoc_topics.topics.items()))


def split_topics(split: str) -> dict[str, str]:
    """Returns the topics of one split ("train" or "validation") without any TFDS preparation.

    Args:
      split: "train" (15 of every 16 topics) or "validation" (the rest).

    Returns:
      `{topic: text}` for that split.
    """
    if split not in ("train", "validation"):
        raise ValueError(f"pydoc_topics has splits 'train' and 'validation', not {split!r}")
    chosen = {}
    for index, (name, text) in enumerate(topics().items()):
        if (index % VALIDATION_EVERY == VALIDATION_EVERY - 1) == (split == "validation"):
            chosen[name] = text
    return chosen


class PydocTopics(tfds.core.GeneratorBasedBuilder):
    """CPython's `pydoc_data.topics` as a TFDS dataset (no download)."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(
            name=f"py{sys.version_info.major}{sys.version_info.minor}",
            description="Topics of the running CPython version.",
        )
    ]

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        """No checksums: nothing is downloaded (and TFDS would need `importlib_resources`)."""
        return None

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="The CPython language reference (pydoc_data.topics), one topic an example.",
            features=tfds.features.FeaturesDict(
                {"title": tfds.features.Text(), "text": tfds.features.Text()}
            ),
            disable_shuffling=True,
            homepage="https://docs.python.org/3/reference/",
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split) for split in ("train", "validation")}

    def _generate_examples(self, split):
        for name, text in split_topics(split).items():
            yield name, {"title": name, "text": text}
