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


@pytest.mark.parametrize("command", [["jobs"], ["worker", "--no-prepare"], ["serve", "--no-worker"]])
def test_an_on_off_switch_takes_on_or_off_words_and_any_other_value_stops_every_command(studio_home, monkeypatch,
                                                                                        capsys, command):
    """STUDIO_REPLAY_AHEAD, STUDIO_FORGETTING_CHECK and STUDIO_DDP_ON_CPU read alike: on/off words or their default;
    a typo is one sentence naming the variable from any command, not a traceback or a guess."""
    from studio import cli, settings
    from studio.spec import JobSpec

    for word, on in (("on", True), ("YES", True), ("1", True), ("off", False), ("No", False), ("0", False)):
        monkeypatch.setenv("STUDIO_FORGETTING_CHECK", word)
        monkeypatch.setenv("STUDIO_DDP_ON_CPU", word)
        assert JobSpec(dataset="d").forgetting_check is on and settings.switch("STUDIO_DDP_ON_CPU") is on
    monkeypatch.delenv("STUDIO_FORGETTING_CHECK")
    monkeypatch.setenv("STUDIO_DDP_ON_CPU", " ")
    assert JobSpec(dataset="d").forgetting_check is True and settings.switch("STUDIO_DDP_ON_CPU") is False
    monkeypatch.setenv("STUDIO_FORGETTING_CHECK", "enabled")
    assert cli.main(command) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: STUDIO_FORGETTING_CHECK must be on or off, got 'enabled'"
    assert not (studio_home / "studio.db").exists(), "the command started before refusing"
