"""An image's cache key covers exactly what goes into it, so a changed input builds a new image (no podman here)."""

from __future__ import annotations

from localcluster.images import Recipe, content_key


def test_the_key_changes_with_what_the_build_copies_and_only_with_that(tmp_path):
    (tmp_path / "Dockerfile").write_text(
        "FROM scratch\n# a comment\nCOPY --chmod=644 app/ /app/\nCOPY \\\n  extra.txt /\n"
    )
    (tmp_path / ".dockerignore").write_text("*\n!app/\n!extra.txt\n**/__pycache__\n")
    (tmp_path / "app" / "__pycache__").mkdir(parents=True)
    (tmp_path / "app" / "main.py").write_text("print(1)\n")
    (tmp_path / "extra.txt").write_text("a\n")
    (tmp_path / "notes.txt").write_text("not copied\n")
    recipe = Recipe(tmp_path / "Dockerfile", context=tmp_path)
    first = content_key(recipe, tmp_path, {"BASE_IMAGE": "localhost/base:1"})

    (tmp_path / "notes.txt").write_text("changed\n")
    (tmp_path / "app" / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"ignored by .dockerignore")
    assert content_key(recipe, tmp_path, {"BASE_IMAGE": "localhost/base:1"}) == first

    seen = {first}
    for change in (
        lambda: (tmp_path / "app" / "main.py").write_text("print(2)\n"),
        lambda: (tmp_path / "app" / "new.py").write_text(""),
        lambda: (tmp_path / "extra.txt").chmod(0o600),
        lambda: (tmp_path / "extra.txt").write_text("b\n"),
        lambda: (tmp_path / "Dockerfile").write_text((tmp_path / "Dockerfile").read_text() + "USER 1\n"),
    ):
        change()
        key = content_key(recipe, tmp_path, {"BASE_IMAGE": "localhost/base:1"})
        assert key not in seen
        seen.add(key)
    assert content_key(recipe, tmp_path, {"BASE_IMAGE": "localhost/base:2"}) not in seen
