"""The tokens file: its grammar, errors that name the line and never the token, and matching."""

import textwrap
from pathlib import Path

import pytest

from gateway.commands.cli import EXIT_CONFIG, main
from gateway.core.config_file import ConfigError, load_config, load_tokens, parse_config
from gateway.core.tokens import TokenFileError, bearer_token, parse_tokens

CI_TOKEN = "ci-0123456789abcdef"
BATCH_TOKEN = "batch-fedcba9876543210"
GOOD = f"""
# who may call the gateway
ci:{CI_TOKEN}

  batch : {BATCH_TOKEN}
"""


def problems_of(text: str) -> list[str]:
    with pytest.raises(TokenFileError) as caught:
        parse_tokens(text)
    return caught.value.problems


def test_names_come_in_file_order_without_comments_or_blank_lines() -> None:
    assert parse_tokens(GOOD).names == ("ci", "batch")


def test_a_token_matches_its_name_and_nothing_else_matches() -> None:
    tokens = parse_tokens(GOOD)
    assert tokens.match(CI_TOKEN) == "ci"
    assert tokens.match(BATCH_TOKEN) == "batch"
    assert tokens.match(CI_TOKEN[:-1]) is None
    assert tokens.match(CI_TOKEN + "0") is None
    assert tokens.match("") is None
    assert tokens.match("é" * 20) is None


def test_only_digests_are_kept_never_the_tokens() -> None:
    tokens = parse_tokens(GOOD)
    assert CI_TOKEN not in repr(tokens)
    assert all(len(digest) == 32 for digest, _ in tokens.entries)


def test_a_token_may_hold_a_colon() -> None:
    assert parse_tokens("ops:abc:defghijklmnopq").match("abc:defghijklmnopq") == "ops"


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (CI_TOKEN, "line 2: expected `name:token`"),
        (f":{CI_TOKEN}", "line 2: expected `name:token`"),
        ("ci:", "line 2: expected `name:token`"),
        (f"-ci:{CI_TOKEN}", "line 2: the name must start with a letter or digit"),
        (f"c i:{CI_TOKEN}", "line 2: the name must start with a letter or digit"),
        ("ci:0123456789 abcdef", "line 2: the token must be visible ASCII, without spaces"),
        ("ci:0123456789abcdé", "line 2: the token must be visible ASCII, without spaces"),
        ("ci:0123456789abcde", "line 2: the token must have at least 16 characters"),
    ],
)
def test_a_bad_line_is_named_by_its_number_without_its_token(line: str, problem: str) -> None:
    (found,) = problems_of(f"# tokens\n{line}\n")
    assert found.startswith(problem)
    token = line.partition(":")[2] or line
    assert token not in found


def test_names_must_be_unique() -> None:
    assert problems_of(f"ci:{CI_TOKEN}\n\nci:{BATCH_TOKEN}\n") == [
        "line 3: the name `ci` is already on line 1"
    ]


def test_tokens_must_be_unique() -> None:
    (problem,) = problems_of(f"ci:{CI_TOKEN}\nbatch:{CI_TOKEN}\n")
    assert problem == "line 2: the same token as line 1"


def test_every_bad_line_is_reported_at_once() -> None:
    assert [p.split(":")[0] for p in problems_of("a\nci:short\nok:0123456789abcdef")] == [
        "line 1",
        "line 2",
    ]


@pytest.mark.parametrize("text", ["", "\n# nobody yet\n\n"])
def test_a_file_without_tokens_is_refused(text: str) -> None:
    assert problems_of(text) == ["no tokens: give at least one `name:token` line"]


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (f"Bearer {CI_TOKEN}", CI_TOKEN),
        (f"bearer {CI_TOKEN}", CI_TOKEN),
        (f"Bearer   {CI_TOKEN} ", CI_TOKEN),
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer ", None),
        (f"Basic {CI_TOKEN}", None),
        (CI_TOKEN, None),
    ],
)
def test_bearer_token_reads_only_the_bearer_scheme(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def test_load_tokens_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"ci:{CI_TOKEN}\nbatch:short-{BATCH_TOKEN[:4]}\n")
    with pytest.raises(ConfigError) as caught:
        load_tokens(str(path))
    assert caught.value.source == str(path)
    assert caught.value.problems == ["line 2: the token must have at least 16 characters"]
    assert CI_TOKEN not in str(caught.value)


def test_a_missing_tokens_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_tokens(str(tmp_path / "absent"))
    assert caught.value.problems == ["cannot read the tokens file: No such file or directory"]


AUTH_CONFIG = textwrap.dedent(
    """
    endpoints: [{name: a, model: a, variants: [{alias: champion}]}]
    auth: {tokens_file: TOKENS}
    """
)


def test_auth_is_off_by_default_and_protects_reads_only_when_asked() -> None:
    plain = parse_config("endpoints: [{name: a, model: a, variants: [{alias: champion}]}]", {})
    assert plain.auth is None
    config = parse_config(AUTH_CONFIG, {"GATEWAY_AUTH__PROTECT_READ": "true"})
    assert config.auth is not None
    assert (config.auth.tokens_file, config.auth.protect_read) == ("TOKENS", True)


def test_the_tokens_file_can_come_from_the_environment() -> None:
    config = parse_config(
        "endpoints: [{name: a, model: a, variants: [{alias: champion}]}]",
        {"GATEWAY_AUTH__TOKENS_FILE": "/run/secrets/tokens"},
    )
    assert config.auth is not None
    assert config.auth.tokens_file == "/run/secrets/tokens"


def test_an_unknown_auth_key_is_named() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(AUTH_CONFIG.replace("tokens_file", "token_file"), {})
    assert "auth.token_file: unknown key (did you mean `tokens_file`?)" in caught.value.problems


def test_check_and_serve_refuse_a_bad_tokens_file_before_anything_else(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"ci:{CI_TOKEN}\nci:{BATCH_TOKEN}\n")
    config = tmp_path / "gateway.yaml"
    config.write_text(AUTH_CONFIG.replace("TOKENS", str(tokens)))
    for command in ("check", "serve"):
        assert main([command, "--config", str(config)], {}) == EXIT_CONFIG
        error = capsys.readouterr().err
        assert "line 2: the name `ci` is already on line 1" in error
        assert CI_TOKEN not in error


def test_a_config_loads_without_its_tokens_file_for_commands_that_do_not_serve(
    tmp_path: Path,
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(AUTH_CONFIG.replace("TOKENS", str(tmp_path / "absent")))
    loaded = load_config(str(config), {})
    assert loaded.auth is not None
