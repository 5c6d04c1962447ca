"""Local model copies are sealed with checksums: a truncated file is noticed."""

from __future__ import annotations

from pathlib import Path

from embedloop.production.registry import SEAL, is_intact, seal


def test_model_copies_are_sealed_with_checksums(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "weights.bin").write_bytes(b"\x00" * 100)
    (tmp_path / "config.json").write_text("{}")
    seal(tmp_path)
    assert is_intact(tmp_path)
    (tmp_path / "sub" / "weights.bin").write_bytes(b"\x00" * 50)  # truncated
    assert not is_intact(tmp_path)


def test_an_empty_seal_proves_nothing(tmp_path: Path) -> None:
    """A seal cut off mid-write (empty) or listing no file is not a sealed copy."""
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / SEAL).write_text("")
    assert not is_intact(tmp_path)
    (tmp_path / SEAL).write_text("{}")
    assert not is_intact(tmp_path)
    seal(tmp_path)
    assert is_intact(tmp_path)
