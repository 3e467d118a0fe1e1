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
    from studio import settings
    from studio.spec import JobSpec
    from workers import cli  # every command, the worker's too

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


BAD_NUMBERS = [
    ("STUDIO_UPLOAD_LIMIT_MB", "abc", "STUDIO_UPLOAD_LIMIT_MB must be a whole number of MiB greater than 0 "
                                      "(at most 1048576), got 'abc'"),
    ("STUDIO_UPLOAD_LIMIT_MB", "-5", None), ("STUDIO_UPLOAD_LIMIT_MB", "0", None),
    ("STUDIO_UPLOAD_LIMIT_MB", "1.5", None), ("STUDIO_UPLOAD_LIMIT_MB", "9" * 5000, None),
    ("STUDIO_UPLOAD_LIMIT_MB", "99999999999999999999", None),
    ("STUDIO_INFER_PORT", "http", "STUDIO_INFER_PORT must be a port number from 1 to 65535, or 0 for a free one, "
                                  "got 'http'"),
    ("STUDIO_INFER_PORT", "70000", None), ("STUDIO_PORT", "0", "STUDIO_PORT must be a port number from 1 to 65535, "
                                                               "got '0'"),
    ("STUDIO_INFER_MEMORY_GB", "nan", "STUDIO_INFER_MEMORY_GB must be a number of gigabytes greater than 0 "
                                      "(at most 1,000,000), got 'nan'"),
    ("STUDIO_INFER_MEMORY_GB", "1e300", None), ("STUDIO_INFER_MEMORY_GB", "-2", None),
    ("STUDIO_MEMORY_LIMIT_GB", "inf", None),
    ("STUDIO_HEARTBEAT_STALE", "soon", "STUDIO_HEARTBEAT_STALE must be a number of seconds greater than 0 "
                                       "(at most 604,800), got 'soon'"),
    ("STUDIO_INFER_ADVERTISE", "http://gpu-1:8000", "STUDIO_INFER_ADVERTISE must be a host name or an IP address "
                                                    "other machines reach this one by (no scheme, port or path), "
                                                    "got 'http://gpu-1:8000'"),
    ("STUDIO_INFER_ADVERTISE", "gpu-1:8000", None), ("STUDIO_INFER_ADVERTISE", "999.1.1.1", None),
]


@pytest.mark.parametrize("name,value,sentence", BAD_NUMBERS)
def test_a_bad_number_in_the_environment_is_one_sentence_naming_it(tmp_path, name, value, sentence):
    with pytest.raises(ValueError) as refused:
        load_settings({"STUDIO_HOME": str(tmp_path), name: value})
    message = str(refused.value)
    assert message.startswith(f"{name} must be ") and message.endswith(f", got '{value[:40]}'")
    assert "\n" not in message and (sentence is None or message == sentence)


def test_good_numbers_and_hosts_are_read_in_their_units(tmp_path):
    from studio.settings import shown_mib

    s = load_settings({"STUDIO_HOME": str(tmp_path), "STUDIO_UPLOAD_LIMIT_MB": " 100 ", "STUDIO_INFER_PORT": "8000",
                       "STUDIO_INFER_HOST": "0.0.0.0", "STUDIO_INFER_ADVERTISE": "gpu-1.lan",
                       "STUDIO_INFER_MEMORY_GB": "2.5", "STUDIO_PORT": "8080", "STUDIO_HEARTBEAT_STALE": "30"})
    assert s.upload_limit_bytes == 100 * 1024 * 1024 and s.upload_limit_text == "100 MiB"
    assert (s.infer_host, s.infer_port, s.infer_advertise, s.infer_memory_gb, s.ui_port) == (
        "0.0.0.0", 8000, "gpu-1.lan", 2.5, 8080)
    assert s.heartbeat_stale_seconds == 30.0
    d = load_settings({"STUDIO_HOME": str(tmp_path)})
    assert (d.upload_limit_text, d.infer_host, d.infer_port, d.infer_advertise, d.infer_memory_gb) == (
        "1024 MiB", "127.0.0.1", 0, None, None)
    for address in ("10.0.0.5", "fd00::5", "[fd00::5]", "worker"):
        assert load_settings({"STUDIO_INFER_ADVERTISE": address}).infer_advertise == address.strip("[]")
    assert shown_mib(512 * 1024) == "0.5 MiB" and shown_mib(3 << 30) == "3072 MiB"


def test_the_inference_memory_budget_is_read_by_settings(monkeypatch):
    from workers.inference.engine import memory_budget_bytes

    assert memory_budget_bytes({"STUDIO_INFER_MEMORY_GB": "2.5"}) == 2_500_000_000
    with pytest.raises(ValueError, match="^STUDIO_INFER_MEMORY_GB must be a number of gigabytes greater than 0 "
                                         r"\(at most 1,000,000\), got 'lots'$"):
        memory_budget_bytes({"STUDIO_INFER_MEMORY_GB": "lots"})


@pytest.mark.parametrize("command", [["jobs"], ["worker", "--no-prepare"], ["serve", "--no-worker"]])
def test_a_bad_number_stops_every_command_with_its_sentence(studio_home, monkeypatch, capsys, command):
    from workers import cli  # every command, the worker's too

    monkeypatch.setenv("STUDIO_UPLOAD_LIMIT_MB", "abc")
    assert cli.main(command) == 2
    assert capsys.readouterr().err.strip() == ("error: STUDIO_UPLOAD_LIMIT_MB must be a whole number of MiB greater "
                                               "than 0 (at most 1048576), got 'abc'")
    monkeypatch.delenv("STUDIO_UPLOAD_LIMIT_MB")
    monkeypatch.setenv("STUDIO_PORT", "http")  # read once the command line is parsed: no traceback either
    assert cli.main(command) == 2
    assert capsys.readouterr().err.strip() == "error: STUDIO_PORT must be a port number from 1 to 65535, got 'http'"
    assert not (studio_home / "studio.db").exists(), "the command started before refusing"


@pytest.mark.parametrize("args,sentence", [
    (["--temperature", "nan"], "argument --temperature: must be a finite number of 0 or more (0 = greedy), got 'nan'"),
    (["--temperature", "inf"], "argument --temperature: must be a finite number of 0 or more (0 = greedy), got 'inf'"),
    (["--temperature", "-1"], "argument --temperature: must be a finite number of 0 or more (0 = greedy), got '-1'"),
    (["--seed", "1e23"], "argument --seed: must be a whole number from -9223372036854775808 to 9223372036854775807, "
                         "got '1e23'"),
    (["--seed", str(2**70)], "argument --seed: must be a whole number from -9223372036854775808 to "
                             f"9223372036854775807, got '{2**70}'"),
])
def test_studio_chat_refuses_a_number_it_cannot_send_in_one_sentence(studio_home, capsys, args, sentence):
    from studio import cli

    with pytest.raises(SystemExit) as exited:
        cli.main(["chat", "some-run", "--prompt", "hi", *args])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == f"studio chat: error: {sentence}"
    assert "Traceback" not in err


def test_studio_chat_takes_the_whole_seed_range(studio_home):
    from studio import cli

    args = cli.build_parser().parse_args(["chat", "r", "--prompt", "p", "--seed", str(-(2**63)),
                                          "--temperature", "0.7"])
    assert (args.seed, args.temperature) == (-(2**63), 0.7)
