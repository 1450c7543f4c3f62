"""Configuration: precedence, validation errors that name their source, the shipped config.yaml."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

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
        ("publish:\n  heartbeat_s: -1\n", r"c\.yaml: publish\.heartbeat_s = -1: out of range: expected a number "
                                           r"from 0\.01 to 3600 s"),
        ("publish:\n  heartbeat_s: fast\n", r"c\.yaml: publish\.heartbeat_s = 'fast': expected a valid number"),
        ("input:\n  direction: sideways\n", r"input\.direction = 'sideways': expected one of 'forward' or 'backward'"),
        ("ingest:\n  endpoint: localhost:5555\n", r"ingest\.endpoint = 'localhost:5555': expected a ZeroMQ endpoint"),
        ("model:\n  min_score: 1.5\n", r"model\.min_score = 1\.5: out of range: expected a number from 0 to 1"),
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


def _numeric_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, bool]]:
    """Every numeric setting as (dotted key, is an integer), found by walking the models."""
    keys: list[tuple[str, bool]] = []
    for name, info in model.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += _numeric_keys(ann, f"{prefix}{name}.")
            continue
        args = [a for a in typing.get_args(ann) if a is not type(None)] or [ann]
        bases = {typing.get_args(a)[0] if typing.get_origin(a) is typing.Annotated else a for a in args}
        if bases & {int, float}:
            keys.append((prefix + name, int in bases))
    return keys


def test_the_walk_finds_the_numeric_keys() -> None:
    found = dict(_numeric_keys())
    assert found["ingest.rcv_hwm"] is True and found["publish.send_hwm"] is True
    assert found["watch.settle_timeout_s"] is False and found["input.width_nm"] is False
    assert "input.channel" not in found and "publish.label_maps" not in found
    assert len(found) >= 20


@pytest.mark.parametrize(("key", "integer"), _numeric_keys())
@pytest.mark.parametrize("value", ["3000000000", "1e300", "-5", ".nan", ".inf", "true"])
def test_every_numeric_key_refuses_absurd_values_naming_key_value_and_range(
    tmp_path: Path, key: str, integer: bool, value: str,
) -> None:
    *sections, name = key.split(".")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("".join(f"{'  ' * depth}{section}:\n" for depth, section in enumerate(sections))
                   + f"{'  ' * len(sections)}{name}: {value}\n")
    if value == "true":
        expected = "expected a number, not true/false"
    elif integer and value in ("1e300", ".nan", ".inf"):
        expected = "expected a valid integer|expected a finite number"
    else:
        expected = r"out of range: expected (an integer|a number) (from|above) -?[\d.e+-]+(, up)? to [\d.e+-]+"
    with pytest.raises(ConfigError, match=rf"c\.yaml: {re.escape(key)} = \S+: ({expected})") as info:
        load_config(cfg, environ={})
    assert "\n" not in str(info.value)


def test_hwm_beyond_what_zeromq_takes_is_refused_with_its_range(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("ingest:\n  rcv_hwm: 3000000000\n")
    with pytest.raises(ConfigError, match=r"ingest\.rcv_hwm = 3000000000: out of range: expected an integer "
                                          r"from 1 to 1000000$"):
        load_config(cfg, environ={})
    with pytest.raises(ConfigError, match=r"environment variable STM_LIVE_PUBLISH_SEND_HWM: publish\.send_hwm = "
                                          r"3000000000: out of range: expected an integer from 1 to 1000000$"):
        load_config(environ={"STM_LIVE_PUBLISH_SEND_HWM": "3000000000"}, use_default_file=False)


@pytest.mark.parametrize(
    ("section", "key", "other"), [("ingest", "rcv_hwm", "publish"), ("publish", "send_hwm", "ingest")]
)
def test_run_with_an_impossible_hwm_exits_promptly_with_one_line(
    tmp_path: Path, section: str, key: str, other: str,
) -> None:
    # Before the ranges, setsockopt raised OverflowError after the socket was made,
    # the socket stayed open and Context.term() hung: `stm-live run` never exited.
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"{section}:\n  endpoint: tcp://127.0.0.1:0\n  {key}: 3000000000\n"
        f"{other}:\n  endpoint: null\nresults:\n  dir: res\n"
    )
    proc = subprocess.run([sys.executable, "-m", "stm_live", "run", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path, env=_clean_env())
    err = proc.stderr.strip()
    assert proc.returncode == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"{section}.{key} = 3000000000: out of range: expected an integer from 1 to 1000000" in err


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("STM_LIVE_")}


def _alias_bomb(levels: int, *, mapping: bool = False) -> str:
    """The "billion laughs" YAML: each level holds nine aliases of the one before (9**levels strings)."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        if mapping:
            items = ", ".join(f"k{j}: *l{i - 1}" for j in range(9))
            lines.append(f"l{i}: &l{i} {{{items}}}")
        else:
            lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


_LIMITED = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # a bomb that escapes fails here, not the machine
from stm_live.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize(("levels", "mapping"), [(6, False), (9, False), (6, True), (8, True)])
def test_a_yaml_alias_bomb_is_refused_in_one_short_line(tmp_path: Path, levels: int, mapping: bool) -> None:
    # Before the cap, 6 levels of lists printed a 4.3 MB error; 9 levels (the classic bomb)
    # and mappings (expanded by the path resolution) ran out of memory or time.
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_alias_bomb(levels, mapping=mapping))
    assert bomb.stat().st_size < 1000
    proc = subprocess.run([sys.executable, "-c", _LIMITED, "config", str(bomb)],
                          capture_output=True, text=True, timeout=60, env=_clean_env())
    assert proc.returncode == 2, proc.stderr[-500:]
    err = proc.stderr.strip()
    assert len(err) < 400 and len(err.splitlines()) == 1, err[:500]
    assert "bomb.yaml: too large once YAML aliases are expanded" in err and proc.stdout == ""


def test_a_bomb_in_an_environment_variable_is_refused_too() -> None:
    levels = ["&l0 [" + ", ".join(["lol"] * 9) + "]"]
    levels += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 9)]
    with pytest.raises(ConfigError, match=r"^environment variable STM_LIVE_WATCH_PATTERNS: too large") as info:
        load_config(environ={"STM_LIVE_WATCH_PATTERNS": "[" + ", ".join(levels) + "]"}, use_default_file=False)
    assert len(str(info.value)) < 400


def test_a_long_string_repeated_by_aliases_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("input:\n  channel: &s " + "Z" * 5000 + "\nwatch:\n  patterns: [" + ", ".join(["*s"] * 300) + "]\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: too large once YAML aliases are expanded"):
        load_config(cfg, environ={})


def test_aliases_of_reasonable_size_still_work(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("input:\n  channel: &c Current\nwatch:\n  patterns: [*c, '*.sxm']\n")
    assert load_config(cfg, environ={}).watch.patterns == ["Current", "*.sxm"]


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("a: &a {b: *a}\n", r"c\.yaml: an alias refers to a node that contains it"),
        ("a: &a [1, *a]\n", r"c\.yaml: an alias refers to a node that contains it"),
        ("a: " + "[" * 5000 + "]" * 5000 + "\n", r"c\.yaml: nested too deeply"),
    ],
)
def test_structures_without_end_are_refused_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, pattern: str,
) -> None:
    # Before: RecursionError tracebacks from the path resolution and from PyYAML itself.
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    assert main(["config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(pattern, err), err[:500]


def test_errors_echo_long_values_and_many_problems_briefly(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    long_value = "y" * 10_000
    cfg.write_text(f"input:\n  channel: [{long_value}]\npublish:\n"
                   + "".join(f"  bad{i}: {long_value}\n" for i in range(60)))
    with pytest.raises(ConfigError) as info:
        load_config(cfg, environ={})
    message = str(info.value)
    assert len(message) <= 2000
    assert "input.channel = ['yyyy" in message and "publish.bad0 = 'yyyy" in message
    assert re.search(r"\n  \.\.\. and \d+ more problems$", message), message


def test_a_huge_file_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("# " + "x" * (2 << 20) + "\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: larger than 1048576 bytes; not a configuration file$"):
        load_config(cfg, environ={})
