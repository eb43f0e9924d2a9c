"""Config: defaults, and the CLI / environment / TOML loaders derived from the fields."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from threshold.cli import parse_args
from threshold.config import (
    Config,
    ConfigError,
    OptionSpec,
    from_environ,
    load_toml,
    options,
)

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.apps.ops_apps:app"
OPTIONS = options()
NAMES = [name for name, _, _, _ in OPTIONS]
FLAG_OPTIONS = [o for o in OPTIONS if o[2].cli and not o[2].positional]
FLAG_NAMES = [name for name, _, _, _ in FLAG_OPTIONS]


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """parse_args reads os.environ: start every test without THRESHOLD_* variables."""
    for key in list(os.environ):
        if key.startswith("THRESHOLD_"):
            monkeypatch.delenv(key)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def sample(name: str, type_str: str, spec: OptionSpec, default: Any) -> Any:
    """A valid value for the option that differs from its default."""
    if name == "app":
        return "some.module:attr"
    if type_str == "bool":
        return not default
    if spec.choices is not None:
        return next(c for c in spec.choices if c != default)
    if type_str == "int":
        return int(max(default, spec.minimum or 0)) + 3
    if type_str == "float":
        return float(max(default, spec.minimum or 0)) + 1.5
    if name == "forwarded_allow_ips":
        return ["10.0.0.0/8", "unix"]
    if type_str.startswith("list"):
        return ["first", "second"]
    assert type_str == "str", f"{name}: no sample for type {type_str}"
    if name == "metrics_bind":
        return "127.0.0.1:9100"
    return "644"  # a plain string that is also valid octal (umask, unix_socket_mode)


# Options that are only valid together with others (cross-option rules in Config).
COMPANIONS: dict[str, dict[str, str]] = {
    "keyfile": {"certfile": "cert.pem"},
    "ca_certs": {"certfile": "cert.pem"},
    "cert_reqs": {"certfile": "cert.pem", "ca_certs": "ca.pem"},
}


def as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(value)
    return str(value)


def write_toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "threshold.toml"
    path.write_text(text)
    return str(path)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("THRESHOLD_")}
    full_env["PYTHONPATH"] = str(ROOT)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "threshold", *args],
        cwd=str(ROOT),
        env=full_env,
        capture_output=True,
        text=True,
        timeout=30,
    )


# -- defaults and declaration ----------------------------------------------------------


def test_defaults() -> None:
    config = Config()
    for name, _, _, default in OPTIONS:
        assert getattr(config, name) == default, name
    assert config.app is None
    assert config.bind == ["127.0.0.1:8000"]
    assert config.interface == "auto"
    assert config.lifespan == "auto"
    assert config.log_level == "info"
    assert config.access_log is True
    assert config.factory is False
    assert config.threads == 8
    assert config.timeout_graceful_shutdown == 30.0


def test_defaults_through_the_cli_match_the_dataclass() -> None:
    assert parse_args([APP]) == Config(app=APP)


def test_config_is_frozen_and_list_defaults_are_not_shared() -> None:
    a, b = Config(), Config()
    assert a.bind is not b.bind
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.threads = 2  # type: ignore[misc]
    assert a.replace(threads=2).threads == 2


def test_every_option_is_declared_with_help_and_a_valid_default() -> None:
    assert len(OPTIONS) == len(dataclasses.fields(Config))
    for name, type_str, spec, default in OPTIONS:
        assert isinstance(spec, OptionSpec), name
        assert spec.help.strip(), f"{name}: no help"
        assert spec.help.rstrip().endswith((".", ")")), f"{name}: help is not a sentence"
        assert type_str in ("Any", "bool", "int", "float", "str") or type_str.startswith("list")
        if spec.choices is not None:
            assert default in spec.choices, name
        if spec.minimum is not None:
            assert default >= spec.minimum, name


def test_help_lists_every_flag_with_its_help() -> None:
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    squeezed = re.sub(r"\s+", "", out)
    for name, type_str, spec, _ in OPTIONS:
        if spec.positional:
            assert spec.metavar is not None and spec.metavar in out, name
        else:
            assert re.search(rf"(?<![\w-]){re.escape(flag(name))}\b", out), flag(name)
            if type_str == "bool":
                assert "--no-" + name.replace("_", "-") in out, name
            for short in spec.flags:
                assert re.search(rf"(?<![\w-]){re.escape(short)}\b", out), short
        assert re.sub(r"\s+", "", spec.help) in squeezed, f"{name}: help text missing"


# -- every option through every loader ------------------------------------------------


@pytest.mark.parametrize(("name", "type_str", "spec", "default"), OPTIONS, ids=NAMES)
def test_environment_variable_per_option(
    name: str, type_str: str, spec: OptionSpec, default: Any
) -> None:
    value = sample(name, type_str, spec, default)
    env_name = "THRESHOLD_" + name.upper()
    assert from_environ({env_name: as_text(value)}) == {name: value}
    environ = {"THRESHOLD_" + k.upper(): v for k, v in COMPANIONS.get(name, {}).items()}
    config = Config.load(environ={env_name: as_text(value), **environ})
    assert getattr(config, name) == value


@pytest.mark.parametrize(("name", "type_str", "spec", "default"), OPTIONS, ids=NAMES)
def test_toml_key_per_option(
    tmp_path: Path, name: str, type_str: str, spec: OptionSpec, default: Any
) -> None:
    value = sample(name, type_str, spec, default)
    others = "".join(f"{k} = {toml_value(v)}\n" for k, v in COMPANIONS.get(name, {}).items())
    underscored = write_toml(tmp_path, f"{others}{name} = {toml_value(value)}\n")
    assert load_toml(underscored)[name] == value
    assert getattr(Config.load(config_file=underscored, environ={}), name) == value
    dashed = name.replace("_", "-")
    table = write_toml(tmp_path, f"[threshold]\n{others}{dashed} = {toml_value(value)}\n")
    assert getattr(Config.load(config_file=table, environ={}), name) == value


@pytest.mark.parametrize(("name", "type_str", "spec", "default"), FLAG_OPTIONS, ids=FLAG_NAMES)
def test_cli_flag_per_option(name: str, type_str: str, spec: OptionSpec, default: Any) -> None:
    value = sample(name, type_str, spec, default)
    if type_str == "bool":
        argv = [flag(name) if value else "--no-" + name.replace("_", "-")]
    elif isinstance(value, list):
        argv = [part for item in value for part in (flag(name), item)]
    else:
        argv = [flag(name), as_text(value)]
    others = [part for k, v in COMPANIONS.get(name, {}).items() for part in (flag(k), v)]
    config = parse_args([APP, *others, *argv])
    assert getattr(config, name) == value
    for short in spec.flags:
        short_argv = [short if a == flag(name) else a for a in argv]
        assert getattr(parse_args([APP, *others, *short_argv]), name) == value


def test_app_is_positional_and_also_comes_from_env_or_toml(tmp_path: Path) -> None:
    assert parse_args([APP]).app == APP
    assert Config.load(environ={"THRESHOLD_APP": APP}).app == APP
    path = write_toml(tmp_path, f'app = "{APP}"\n')
    assert parse_args(["--config", path]).app == APP


# -- precedence ---------------------------------------------------------------------------


def test_precedence_cli_over_env_over_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_toml(
        tmp_path,
        'threads = 2\nbind = ["toml:1"]\naccess_log = false\nlifespan = "on"\n'
        'log_level = "debug"\n',
    )
    monkeypatch.setenv("THRESHOLD_THREADS", "3")
    monkeypatch.setenv("THRESHOLD_BIND", "env:1,env:2")
    monkeypatch.setenv("THRESHOLD_LIFESPAN", "off")
    config = parse_args([APP, "--config", path, "--threads", "4", "--access-log"])
    assert config.threads == 4  # CLI beats env and file
    assert config.access_log is True  # CLI beats file
    assert config.bind == ["env:1", "env:2"]  # env beats file
    assert config.lifespan == "off"  # env beats file
    assert config.log_level == "debug"  # the file beats the default

    config = parse_args([APP, "--config", path])
    assert config.threads == 3
    monkeypatch.delenv("THRESHOLD_THREADS")
    assert parse_args([APP, "--config", path]).threads == 2
    # A repeated CLI flag replaces the env / file list entirely.
    assert parse_args([APP, "--config", path, "-b", "cli:1"]).bind == ["cli:1"]


def test_bool_flags_both_ways(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_args([APP, "--access-log"]).access_log is True
    assert parse_args([APP, "--no-access-log"]).access_log is False
    assert parse_args([APP, "--no-access-log", "--access-log"]).access_log is True  # last wins
    for text, expected in [("0", False), ("off", False), ("no", False), ("1", True)]:
        monkeypatch.setenv("THRESHOLD_ACCESS_LOG", text)
        assert parse_args([APP]).access_log is expected, text
    monkeypatch.setenv("THRESHOLD_ACCESS_LOG", "false")
    assert parse_args([APP, "--access-log"]).access_log is True


def test_bind_is_repeatable() -> None:
    config = parse_args([APP, "-b", "127.0.0.1:1", "--bind", "unix:/tmp/x.sock", "-b", "fd://3"])
    assert config.bind == ["127.0.0.1:1", "unix:/tmp/x.sock", "fd://3"]
    assert parse_args([APP, "--bind=[::1]:0"]).bind == ["[::1]:0"]


def test_toml_single_string_for_a_list_and_int_for_a_float(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'bind = "127.0.0.1:9"\ntimeout_graceful_shutdown = 2\n')
    config = Config.load(config_file=path, environ={})
    assert config.bind == ["127.0.0.1:9"]
    assert config.timeout_graceful_shutdown == 2.0
    assert isinstance(config.timeout_graceful_shutdown, float)


# -- errors name the option -----------------------------------------------------------


@pytest.mark.parametrize(
    ("options_", "message"),
    [
        ({"threads": "8"}, "threads: expected int"),
        ({"threads": True}, "threads: expected int"),
        ({"threads": 2.5}, "threads: expected int"),
        ({"access_log": "yes"}, "access_log: expected bool"),
        ({"bind": "127.0.0.1:1"}, "bind: expected list"),
        ({"bind": []}, "bind: at least one"),
        ({"lifespan": "maybe"}, "lifespan: 'maybe' is not one of auto, on, off"),
        ({"log_level": "loud"}, "log_level: 'loud' is not one of"),
        ({"threads": 0}, "threads: 0 is below the minimum 1"),
        ({"timeout_graceful_shutdown": -1.0}, "timeout_graceful_shutdown: -1.0 is below"),
        ({"umask": "999"}, "umask: '999' is not an octal number"),
    ],
)
def test_bad_values_from_python(options_: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config(**options_)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"THRESHOLD_NOPE": "1"}, "THRESHOLD_NOPE: unknown option"),
        ({"THRESHOLD_THREADS": "abc"}, "threads: cannot read 'abc' as int"),
        ({"THRESHOLD_TIMEOUT_GRACEFUL_SHUTDOWN": "soon"}, "timeout_graceful_shutdown: cannot"),
        ({"THRESHOLD_ACCESS_LOG": "maybe"}, "access_log: cannot read 'maybe' as bool"),
        ({"THRESHOLD_LIFESPAN": "maybe"}, "lifespan: 'maybe' is not one of"),
        ({"THRESHOLD_THREADS": "0"}, "threads: 0 is below the minimum 1"),
    ],
)
def test_bad_environment(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.load(environ=environ)
    assert message in str(info.value)


def test_unrelated_environment_is_ignored() -> None:
    assert Config.load(environ={"PATH": "/bin", "THRESHOLDX": "1", "MY_THRESHOLD_A": "1"})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nope = 1\n", "nope: unknown option"),
        ("[threshold]\nthreads = 2\nbogus-key = 1\n", "bogus-key: unknown option"),
        ('threads = "8"\n', "threads: expected int"),
        ("threads = 0\n", "threads: 0 is below the minimum 1"),
        ('lifespan = "maybe"\n', "lifespan: 'maybe' is not one of"),
        ('access_log = "yes"\n', "access_log: expected bool"),
        ("bind = 8000\n", "bind: expected list"),
        ("threads = \n", "is not valid TOML"),
    ],
)
def test_bad_toml(tmp_path: Path, text: str, message: str) -> None:
    path = write_toml(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        Config.load(config_file=path, environ={})
    assert message in str(info.value)


def test_missing_toml_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config: cannot read"):
        load_toml(str(tmp_path / "absent.toml"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--threads", "abc"], "threads: cannot read 'abc' as int"),
        (["--threads", "0"], "threads: 0 is below the minimum 1"),
        (["--timeout-graceful-shutdown", "-1"], "timeout_graceful_shutdown: -1.0 is below"),
        (["--keep-alive-timeout", "x"], "keep_alive_timeout: cannot read 'x' as float"),
    ],
)
def test_bad_cli_values(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_args([APP, *argv])
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--lifespan", "maybe"], "argument --lifespan: invalid choice: 'maybe'"),
        (["--log-level", "loud"], "argument --log-level: invalid choice: 'loud'"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_cli_choice_and_unknown_flag_are_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        parse_args([APP, *argv])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_no_app_is_an_error() -> None:
    with pytest.raises(ConfigError, match="app: no application given"):
        parse_args([])


# -- the process: exit code 2 and one clear line --------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ([APP, "--threads", "0"], {}, "threshold: error: threads: 0 is below the minimum 1"),
        ([APP], {"THRESHOLD_NOPE": "1"}, "threshold: error: THRESHOLD_NOPE: unknown option"),
        ([], {}, "threshold: error: app: no application given"),
    ],
    ids=["below-minimum", "unknown-env", "no-app"],
)
def test_process_config_errors_exit_2_with_one_line(
    args: list[str], env: dict[str, str], message: str
) -> None:
    result = run_cli(*args, env=env)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(message), result.stderr


def test_process_toml_error_exits_2_with_one_line(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "threads = 1\nworkerz = 4\n")
    result = run_cli(APP, "--config", path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"threshold: error: workerz: unknown option (in {path})"]


def test_process_bad_choice_is_a_usage_error() -> None:
    result = run_cli(APP, "--lifespan", "maybe")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("threshold: error:")]
    assert errors == [
        "threshold: error: argument --lifespan: invalid choice: 'maybe' "
        "(choose from 'auto', 'on', 'off')"
    ]
