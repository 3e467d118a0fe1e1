import pytest

from studio.settings import UnsafePath, check_name, load_settings


def test_everything_lives_under_the_data_directory(tmp_path):
    s = load_settings({"STUDIO_HOME": str(tmp_path / "h")})
    assert s.database_url == f"sqlite:///{tmp_path / 'h' / 'studio.db'}"
    assert s.queue_url == f"sqlite:///{tmp_path / 'h' / 'queue.db'}"
    assert s.jobs_dir.is_relative_to(s.home) and s.datasets_dir.is_relative_to(s.home)


def test_server_backends_by_configuration(tmp_path):
    s = load_settings({"STUDIO_HOME": str(tmp_path), "STUDIO_QUEUE_URL": "redis://127.0.0.1:6379/0",
                       "STUDIO_DATABASE_URL": "postgresql+psycopg://u@h/db", "STUDIO_AUTH": "me:secret"})
    assert s.queue_url.startswith("redis://") and s.database_url.startswith("postgresql")
    assert s.auth == ("me", "secret")


@pytest.mark.parametrize("bad", ["../etc", "a/b", "", ".hidden", "x" * 65, "a b", "..", "a..b"])
def test_unsafe_names_are_refused(bad):
    with pytest.raises(UnsafePath):
        check_name(bad)


def test_paths_cannot_leave_the_data_directory(tmp_path):
    s = load_settings({"STUDIO_HOME": str(tmp_path / "h")})
    s.ensure_dirs()
    with pytest.raises(UnsafePath):
        s.resolve("../outside")
    with pytest.raises(UnsafePath):
        s.resolve("/etc/passwd")
    (tmp_path / "secret").write_text("x")
    (s.home / "link").symlink_to(tmp_path / "secret")
    with pytest.raises(UnsafePath):
        s.resolve("link")
    assert s.resolve("jobs/abc") == s.jobs_dir / "abc"
