"""`auto` precision: bf16 only where the CPU runs it in hardware, never slower than fp32."""

from __future__ import annotations

import pytest

from embedloop.encoding import bf16_verdict, choose_precision, cpu_flags

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
