"""Which failed writes count as a full volume, and what is left behind (the whole run: test_recipe.py's
full-volume test, on a real tmpfs)."""

from __future__ import annotations

import errno

import pytest

from longalign_trainer.train.volume_space import VolumeFull, room_for


def test_a_write_failing_for_want_of_space_deletes_its_partial_output_and_says_what_it_needs(tmp_path):
    earlier, partial = tmp_path / "step-4", tmp_path / ".tmp-step-8"
    earlier.mkdir()
    (earlier / "shard").write_bytes(b"x" * 3 * 2**20)
    partial.mkdir()
    (partial / "shard").write_bytes(b"x" * 2**20)
    needs = r"checkpoint step-8 did not fit: .* it takes about 3 MiB \(the partial 1 MiB written is deleted\)\. Make"
    with pytest.raises(VolumeFull, match=needs), room_for("checkpoint step-8", partial, earlier, "Make room."):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert not partial.exists() and earlier.exists()


def test_a_write_failing_for_another_reason_is_raised_as_it_is_and_keeps_its_partial_output(tmp_path):
    partial = tmp_path / ".tmp-step-8"
    partial.mkdir()
    with pytest.raises(PermissionError), room_for("checkpoint step-8", partial, None, "Make room."):
        raise PermissionError(errno.EACCES, "Permission denied")
    assert partial.exists()
