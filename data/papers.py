"""Research papers (S2ORC JSON) to plain text for language-model training, one paper per line.

    python -m data.papers --out papers            # the ACLSum papers (pip install aclsum)
    python -m data.papers --json 'dir/*.json' --validation 0.2 --out papers

writes `papers/train.txt` and `papers/validation.txt`, one paper per line (title, abstract and
body paragraphs, in order, joined by spaces), split by paper so that no paper is in both. Train
on them with

    python -m train --config configs/bert_mlm.py:adapt \\
        --config.data.files.train=papers/train.txt \\
        --config.data.files.validation=papers/validation.txt

Without `--json`, the papers are the 250 ACL Anthology papers that the `aclsum` package ships
(`aclsum/dataset/paper_jsons/`); its own train and validation lists pick the split (100 and 50
papers), and its 100 test papers are left out, so that they stay unseen for evaluation. With
`--json`, a paper goes to validation when the hash of its file name falls in the `--validation`
fraction: the split does not depend on the order or the number of files.

S2ORC keeps a paper's text in `pdf_parse.body_text` (or `body_text`), a list of paragraphs
`{"text", "section", ...}`; citations and references stay in the text as written.
"""

from __future__ import annotations

import glob
import hashlib
import json
import sys
from collections.abc import Iterable
from pathlib import Path

from data.errors import DataError
from models.errors import ArgumentParser, one_line_errors

SPLITS = ("train", "validation")


def paper_text(paper: dict) -> str:
    """One line of text: the title, the abstract and every body paragraph of an S2ORC paper."""
    parse = paper.get("pdf_parse") or paper
    parts = [str(paper.get("title") or "")]
    abstract = paper.get("abstract") or parse.get("abstract") or ""
    if isinstance(abstract, list):  # pdf_parse.abstract is a list of paragraphs
        abstract = " ".join(_paragraph(p) for p in abstract)
    parts.append(str(abstract))
    parts += [_paragraph(p) for p in parse.get("body_text") or ()]
    return " ".join(" ".join(p.split()) for p in parts if p and p.strip())


def _paragraph(p) -> str:
    return str(p.get("text", "")) if isinstance(p, dict) else str(p)


def read_paper(path: Path) -> str:
    try:
        paper = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not an S2ORC paper JSON ({type(e).__name__}: {e})") from None
    if not isinstance(paper, dict):
        raise DataError(
            f"{path}: not an S2ORC paper JSON (a {type(paper).__name__}, not an object)"
        )
    text = paper_text(paper)
    if not text:
        raise DataError(f"{path}: the paper has no title, abstract or body text")
    return text


def aclsum_split() -> dict[str, list[Path]]:
    """The ACLSum papers by the package's own split: {"train": [...], "validation": [...]}."""
    import importlib.util

    spec = importlib.util.find_spec("aclsum")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the ACLSum papers need `pip install aclsum` (or give --json GLOB)")
    root = Path(next(iter(spec.submodule_search_locations))) / "dataset"
    out = {}
    for split, listing in (("train", "train.jsonl"), ("validation", "val.jsonl")):
        ids = [json.loads(line)["id"] for line in (root / listing).read_text().splitlines()]
        out[split] = [root / "paper_jsons" / f"{i}.json" for i in ids]
        missing = [p for p in out[split] if not p.is_file()]
        if missing:
            raise DataError(f"{missing[0]}: listed in {listing} but not installed")
    return out


def hashed_split(paths: Iterable[Path], validation: float) -> dict[str, list[Path]]:
    """Splits papers by a hash of their file name: stable under reordering and additions."""
    if not 0.0 < validation < 1.0:
        raise DataError(f"--validation {validation}: give a fraction between 0 and 1")
    out = {"train": [], "validation": []}
    for path in sorted(paths):
        digest = hashlib.sha256(path.name.encode()).digest()
        share = int.from_bytes(digest[:8], "big") / 2**64
        out["validation" if share < validation else "train"].append(path)
    if not out["train"] or not out["validation"]:
        raise DataError(
            f"{sum(map(len, out.values()))} papers give an empty split at --validation "
            f"{validation}; give more papers or another fraction"
        )
    return out


def write_splits(splits: dict[str, list[Path]], out: Path) -> dict[str, dict]:
    """Writes `out/SPLIT.txt` for each split; returns {split: {"papers", "chars", "path"}}."""
    out.mkdir(parents=True, exist_ok=True)
    report = {}
    for split, paths in splits.items():
        texts = [read_paper(p) for p in paths]
        target = out / f"{split}.txt"
        target.write_text("".join(t + "\n" for t in texts), encoding="utf-8")
        report[split] = {"papers": len(texts), "chars": sum(map(len, texts)), "path": str(target)}
    return report


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m data.papers", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory for train.txt, validation.txt")
    parser.add_argument("--json", help="a glob of S2ORC paper JSON files (default: ACLSum's)")
    parser.add_argument(
        "--validation", type=float, default=0.2, help="with --json: held-out fraction (0.2)"
    )
    args = parser.parse_args(argv)
    if args.json:
        paths = [Path(p) for p in glob.glob(args.json)]
        if not paths:
            raise DataError(f"--json {args.json!r}: no file matches")
        splits = hashed_split(paths, args.validation)
    else:
        splits = aclsum_split()
    for split, r in write_splits(splits, Path(args.out)).items():
        print(f"{split}: {r['papers']} papers, {r['chars']:,} characters -> {r['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
