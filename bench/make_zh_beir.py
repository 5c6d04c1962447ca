"""A small Chinese retrieval set in BEIR layout, from Vim's Chinese tutors (real text
that Debian's vim installs offline), to show the harness takes non-English data as is.

Each tutor section ("第二讲第一节：删除类命令") gives one query, its topic ("删除类命令"),
and one document per numbered step of that section; the steps of a section are its
relevant documents. Sections alternate between the train and test splits.

    .venv/bin/python bench/make_zh_beir.py --out bench/out/zh-beir
    .venv/bin/python bench/protocol.py --beir bench/out/zh-beir --out bench/out/zh \\
        --batches 2 --no-ceiling
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

TUTOR_DIR = Path("/usr/share/vim/vim90/tutor")
TUTORS = (TUTOR_DIR / "tutor.zh_cn.utf-8", TUTOR_DIR / "tutor.zh.utf-8")  # simplified, traditional
SECTION = re.compile(r"^\s*(第.[讲講]第.[节節])\s*[：:︰]\s*(.+?)\s*$")
STEP = re.compile(r"^\s{0,4}(\d+)\.\s+(.*)$")


def sections(text: str) -> list[tuple[str, list[str]]]:
    """(topic, steps) per section; a step runs on over its indented continuation lines."""
    found: list[tuple[str, list[str]]] = []
    steps: list[str] | None = None
    for line in text.splitlines():
        if head := SECTION.match(line):
            steps = []
            found.append((head.group(2), steps))
        elif steps and line.strip().startswith("第") and ("讲" in line or "講" in line):
            steps = None  # a summary or the next lecture: not part of this section
        elif steps is not None and (step := STEP.match(line)):
            steps.append(step.group(2).strip())
        elif steps and line.strip().strip("~") and not line.lstrip().startswith("--->"):
            steps[-1] += " " + line.strip()
    return [(topic, s) for topic, s in found if s]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    corpus, queries, qrels = [], [], {"train": [], "test": []}
    for t, tutor in enumerate(TUTORS):
        for s, (topic, steps) in enumerate(sections(tutor.read_text(encoding="utf-8"))):
            qid = f"q{t}-{s}"
            queries.append({"_id": qid, "text": topic})
            split = "test" if s % 3 == 2 else "train"
            for n, step in enumerate(steps):
                did = f"d{t}-{s}-{n}"
                corpus.append({"_id": did, "title": "", "text": step})
                qrels[split].append(f"{qid}\t{did}\t1")
    (args.out / "qrels").mkdir(parents=True, exist_ok=True)
    for name, rows in (("corpus.jsonl", corpus), ("queries.jsonl", queries)):
        with (args.out / name).open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    for split, lines in qrels.items():
        (args.out / "qrels" / f"{split}.tsv").write_text(
            "query-id\tcorpus-id\tscore\n" + "\n".join(lines) + "\n", encoding="utf-8")
    print(f"{len(corpus)} documents, {len(queries)} queries "
          f"({len(qrels['train'])} train / {len(qrels['test'])} test judgements) in {args.out}")


if __name__ == "__main__":
    main()
