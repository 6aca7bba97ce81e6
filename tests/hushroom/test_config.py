"""The shared configuration loader: precedence, conversion and one-line errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from hushroom.config import (
    ConfigError,
    add_arguments,
    load,
    make_parser,
    option,
    parse_host_port,
    parse_port_range,
    run_main,
)


def _check_even(value: int) -> int:
    if value % 2:
        raise ValueError("must be even")
    return value


@dataclasses.dataclass(frozen=True)
class Sample:
    listen: list[str] = option(default_factory=lambda: ["127.0.0.1:1"], help="where")
    count: int = option(2, help="how many", check=_check_even)
    verbose: bool = option(False, help="talk more")
    path: Path | None = option(None, help="a file")
    secret: str | None = option(None, help="a secret", env="HUSHROOM_SAMPLE_SECRET_X")


def _load(argv: list[str], environ: dict[str, str]) -> Sample:
    parser = make_parser("sample", "test")
    add_arguments(parser, Sample)
    return load(Sample, "sample", parser.parse_args(argv), environ)


def test_defaults_apply_when_nothing_is_given() -> None:
    assert _load([], {}) == Sample()


def test_flag_beats_environment_beats_file(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text("[sample]\ncount = 4\nverbose = true\n")
    env = {"HUSHROOM_CONFIG": str(toml), "HUSHROOM_SAMPLE_COUNT": "6"}
    assert _load([], {"HUSHROOM_CONFIG": str(toml)}).count == 4
    assert _load([], env).count == 6
    assert _load(["--count", "8"], env).count == 8
    assert _load([], env).verbose is True
    assert _load(["--no-verbose"], env).verbose is False


def test_repeatable_flag_and_comma_separated_environment() -> None:
    assert _load(["--listen", "a:1", "--listen", "b:2"], {}).listen == ["a:1", "b:2"]
    assert _load([], {"HUSHROOM_SAMPLE_LISTEN": "a:1, b:2"}).listen == ["a:1", "b:2"]


def test_explicit_environment_name_is_used() -> None:
    assert _load([], {"HUSHROOM_SAMPLE_SECRET_X": "s"}).secret == "s"


@pytest.mark.parametrize(
    ("argv", "environ", "key"),
    [
        (["--count", "x"], {}, "--count"),
        (["--count", "3"], {}, "--count"),
        ([], {"HUSHROOM_SAMPLE_COUNT": "3"}, "HUSHROOM_SAMPLE_COUNT"),
        ([], {"HUSHROOM_SAMPLE_VERBOSE": "maybe"}, "HUSHROOM_SAMPLE_VERBOSE"),
    ],
)
def test_bad_value_names_its_key(argv: list[str], environ: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(argv, environ)
    assert info.value.key == key


def test_unknown_or_mistyped_toml_key_is_refused(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text("[sample]\ncuont = 4\n")
    with pytest.raises(ConfigError, match=r"\[sample\]\.cuont: unknown setting"):
        _load(["--config", str(toml)], {})
    toml.write_text('[sample]\ncount = "four"\n')
    with pytest.raises(ConfigError, match=r"\[sample\]\.count"):
        _load(["--config", str(toml)], {})
    toml.write_text("[sample\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        _load(["--config", str(toml)], {})


def test_run_main_reports_one_line_and_exit_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    code = run_main("sample", "test", Sample, "sample", ["--count", "3"], lambda c: 0)
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1
    assert "--count: must be even" in err


def test_unknown_flag_is_one_line_and_exit_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        run_main("sample", "test", Sample, "sample", ["--bogus"], lambda c: 0)
    assert info.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:80", ("127.0.0.1", 80)), ("[::1]:0", ("::1", 0)), ("h:65535", ("h", 65535))],
)
def test_host_port_parses(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text) == expected


@pytest.mark.parametrize("text", ["80", ":80", "h:x", "h:70000", "::1:80", "[zz]:1"])
def test_bad_host_port_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_host_port(text)


def test_port_range() -> None:
    assert parse_port_range("49152-65535") == (49152, 65535)
    for bad in ("5-4", "0-10", "a-b", "10"):
        with pytest.raises(ValueError):
            parse_port_range(bad)
