"""Configuration: precedence, validation errors that name their source, the shipped config.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest

from stm_live.cli import main
from stm_live.config import Config, load_config
from stm_live.errors import ConfigError, StmLiveError

REPO = Path(__file__).resolve().parents[1]


def test_shipped_config_yaml_equals_the_defaults() -> None:
    shipped = load_config(REPO / "config.yaml", environ={})
    defaults = Config()
    ours = shipped.to_dict()
    # Paths in the file are resolved against the file's folder.
    assert Path(ours["results"]["dir"]) == REPO / defaults.results.dir
    ours["results"]["dir"] = str(defaults.results.dir)
    assert ours == defaults.to_dict()


def test_every_key_of_the_shipped_config_is_commented() -> None:
    lines = (REPO / "config.yaml").read_text().splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if line.startswith("  ") and ":" in stripped and not stripped.startswith("#"):
            assert lines[i - 1].strip().startswith("#"), f"config.yaml line {i + 1} has no comment: {line!r}"


def test_precedence_defaults_file_env_cli(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("publish:\n  heartbeat_s: 5\n  send_hwm: 7\ninput:\n  channel: Current\n")
    env = {"STM_LIVE_PUBLISH_HEARTBEAT_S": "3.5", "STM_LIVE_INPUT_CHANNEL": "Frequency_Shift"}
    config = load_config(cfg, environ=env, overrides={"input.channel": "Z", "model.path": None})
    assert config.publish.send_hwm == 7  # file over default
    assert config.publish.heartbeat_s == 3.5  # env over file
    assert config.input.channel == "Z"  # command line over env
    assert config.model.path is None  # an option not given changes nothing
    assert config.publish.label_maps is True  # default


def test_relative_paths_in_file_are_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    cfg = tmp_path / "sub" / "c.yaml"
    cfg.write_text("results:\n  dir: out\nwatch:\n  folders: [scans, /abs/x]\n")
    config = load_config(cfg, environ={})
    assert config.results.dir == (tmp_path / "sub" / "out").resolve()
    assert config.watch.folders == [(tmp_path / "sub" / "scans").resolve(), Path("/abs/x")]


def test_config_is_frozen() -> None:
    config = Config()
    with pytest.raises(ValueError, match="frozen"):
        config.publish.heartbeat_s = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("publish:\n  bogus: 1\n", r"c\.yaml: publish\.bogus = 1: unknown key"),
        ("nonsense:\n  x: 1\n", r"c\.yaml: nonsense = .*unknown key"),
        ("publish:\n  heartbeat_s: -1\n", r"c\.yaml: publish\.heartbeat_s = -1: expected greater than 0"),
        ("publish:\n  heartbeat_s: fast\n", r"c\.yaml: publish\.heartbeat_s = 'fast': expected a valid number"),
        ("input:\n  direction: sideways\n", r"input\.direction = 'sideways': expected one of 'forward' or 'backward'"),
        ("ingest:\n  endpoint: localhost:5555\n", r"ingest\.endpoint = 'localhost:5555': expected a ZeroMQ endpoint"),
        ("model:\n  min_score: 1.5\n", r"model\.min_score = 1\.5: expected less than or equal to 1"),
        ("watch:\n  patterns: '*.sxm'\n", r"watch\.patterns = '\*\.sxm': expected a valid list"),
        ("- just\n- a list\n", r"c\.yaml: expected a mapping of sections"),
        ("publish: [unclosed\n", r"c\.yaml: invalid YAML at line 2"),
    ],
)
def test_file_errors_name_file_key_value_and_expectation(tmp_path: Path, text: str, pattern: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=pattern) as info:
        load_config(cfg, environ={})
    assert isinstance(info.value, StmLiveError) and isinstance(info.value, ValueError)


def test_env_errors_name_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"environment variable STM_LIVE_PUBLISH_SEND_HWM: publish\.send_hwm = 0"):
        load_config(environ={"STM_LIVE_PUBLISH_SEND_HWM": "0"}, use_default_file=False)
    with pytest.raises(ConfigError, match=r"STM_LIVE_NOPE_X: unknown setting"):
        load_config(environ={"STM_LIVE_NOPE_X": "1"}, use_default_file=False)
    with pytest.raises(ConfigError, match=r"publish\.label_mapz = True: unknown key"):
        load_config(environ={"STM_LIVE_PUBLISH_LABEL_MAPZ": "true"}, use_default_file=False)


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nowhere\.yaml: configuration file not found"):
        load_config(tmp_path / "nowhere.yaml", environ={})


def test_config_command_prints_effective_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("publish:\n  send_hwm: 42\n")
    assert main(["config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "send_hwm: 42" in out and "heartbeat_s: 2.0" in out


def test_config_command_reports_the_error_in_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("publish:\n  send_hwm: lots\n")
    assert main(["config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "c.yaml: publish.send_hwm = 'lots'" in err and "Traceback" not in err
