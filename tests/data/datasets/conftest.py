import pytest


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    """Every test gets its own cache: nothing is read from or written to the user's."""
    monkeypatch.setenv("OBJGUIDED_CACHE", str(tmp_path / "cache"))
