"""`auto` precision: bf16 only where the CPU runs it in hardware, never slower than fp32."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedloop.models.encoding import bf16_verdict, choose_encoder, choose_precision, cpu_flags

XEON_AMX = "processor : 0\nflags : fpu sse avx512f avx512_bf16 amx_bf16 amx_tile\n"
AVX512_NO_BF16 = "processor : 0\nflags : fpu sse avx2 avx512f avx512bw avx512vl\n"
GRAVITON3 = "processor : 0\nFeatures : fp asimd sve bf16 i8mm\n"


@pytest.mark.parametrize("cpuinfo, native, said", [
    (XEON_AMX, True, "amx_bf16, avx512_bf16"),
    (AVX512_NO_BF16, False, "emulated"),
    (GRAVITON3, True, "bf16 runs in hardware"),
])
def test_bf16_only_where_the_cpu_has_it(cpuinfo: str, native: bool, said: str) -> None:
    verdict, why = bf16_verdict(cpu_flags(cpuinfo))
    assert verdict is native and said in why


def test_unknown_flags_are_fp32() -> None:
    assert bf16_verdict(None) == (False, "CPU flags unknown (no /proc/cpuinfo): fp32, the "
                                         "safe choice")


def test_a_configured_precision_wins_and_nonsense_is_refused() -> None:
    assert choose_precision("fp32", "cpu") == ("fp32", "set in the configuration")
    assert choose_precision("auto", "cpu")[0] in ("fp32", "bf16")
    with pytest.raises(ValueError, match="auto, fp32, bf16 or fp16"):
        choose_precision("int4", "cpu")


def test_the_encoder_is_openvino_on_a_cpu_that_has_it_and_torch_on_a_gpu(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import embedloop.models.exported

    monkeypatch.setattr(embedloop.models.exported, "backend_available", lambda b: True)
    assert choose_encoder("auto", "cpu", "bf16")[0] == "openvino"
    assert choose_encoder("auto", "cuda:0", "bf16")[0] == "bf16"
    assert choose_encoder("torch", "cpu", "fp32")[0] == "fp32"
    assert choose_encoder("onnx-int8", "cpu", "fp32")[0] == "onnx-int8"
    monkeypatch.setattr(embedloop.models.exported, "backend_available", lambda b: b == "torch")
    encoder, why = choose_encoder("auto", "cpu", "fp32")
    assert (encoder, why) == ("fp32", "OpenVINO not installed: torch")
    with pytest.raises(ValueError, match="not installed"):
        choose_encoder("openvino", "cpu", "fp32")
    with pytest.raises(ValueError, match="encode_backend must be"):
        choose_encoder("tensorrt", "cpu", "fp32")


def test_the_export_cache_keeps_the_recently_used_and_drops_the_rest(tmp_path: Path) -> None:
    """A deployment adds an export per candidate; the cache keeps the most recently used
    ones and anything used within a day."""
    import os
    import time

    from embedloop.models.exported import prune_exports

    now = time.time()
    for i in range(12):  # e0 used 12 days ago ... e11 an hour ago
        folder = tmp_path / f"e{i}"
        folder.mkdir()
        (folder / "model.onnx").write_bytes(b"x")
        age = (12 - i) * 86_400 if i < 11 else 3_600
        os.utime(folder, (now - age, now - age))
    removed = prune_exports(tmp_path, keep=8)
    assert sorted(p.name for p in removed) == ["e0", "e1", "e2", "e3"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"e{i}" for i in range(4, 12))
    assert prune_exports(tmp_path, keep=2, min_age_s=30 * 86_400) == []  # none old enough
