"""Reading msmtpq's space-joined argument lines back into an argv, or refusing them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relayd.errors import UsageError
from relayd.submission.msmtpq_args import Ambiguous, split_line


@pytest.mark.parametrize(
    ("line", "argv"),
    [
        ("-oi -F Alice Smith you@x\n", ["-oi", "-F", "Alice Smith", "you@x"]),
        ("-FAlice Smith you@x\n", ["-FAlice Smith", "you@x"]),
        ("-t -F Alice  Smith\n", ["-t", "-F", "Alice  Smith"]),  # two spaces kept
        ("-F Alice -- you@x\n", ["-F", "Alice", "--", "you@x"]),
        ("-F Alice -f me@x you@x\n", ["-F", "Alice", "-f", "me@x", "you@x"]),
        (
            "--passwordeval=pass show mail you@x\n",
            ["--passwordeval=pass show mail", "you@x"],
        ),
        ("-oi -- Alice Smith <a@x> c@x\n", ["-oi", "--", "Alice Smith <a@x>", "c@x"]),
        ('"Alice Smith" <a@x>\n', ['"Alice Smith" <a@x>']),
        ("-a work -f me@x a@x b@x\n", ["-a", "work", "-f", "me@x", "a@x", "b@x"]),
        ("root\n", ["root"]),  # a local recipient (aliases), as msmtp reads it
        ("-f  a@x\n", ["-f", "", "a@x"]),  # `-f ""`: the empty sender
        ("-t\n", ["-t"]),
    ],
)
def test_lines_read_back(line: str, argv: list[str]) -> None:
    assert split_line(line).argv == argv


def test_joined_is_reported_and_shown_quoted() -> None:
    arguments = split_line("-F Alice Smith you@x\n")
    assert arguments.joined
    assert arguments.shown() == "-F 'Alice Smith' you@x"
    assert arguments.invocation.full_name == "Alice Smith"
    assert arguments.invocation.recipients == ["you@x"]
    assert not split_line("-oi you@x\n").joined


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("-F Alice Smith root\n", "no recipient left"),
        ("-F Alice Bob <b@x>\n", "where the value of -F ends"),
        ("--passwordeval=gpg -d x.gpg a@x\n", "'x.gpg' may be a recipient"),
        ("a@x  c@x\n", "empty recipient"),
        ("a@x (Alice Smith)\n", "split name or comment"),
    ],
)
def test_ambiguous_lines_are_refused(line: str, why: str) -> None:
    with pytest.raises(Ambiguous, match="ambiguous arguments") as caught:
        split_line(line)
    assert why in caught.value.message


def test_bad_option_is_the_usage_error_of_relayd_sendmail() -> None:
    with pytest.raises(UsageError, match="unrecognized option '--bogus'"):
        split_line("--bogus a@x\n")


_WORD = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters=" \n\0-@<"), min_size=1, max_size=8
)
_ADDRESS = st.builds(lambda local, domain: f"{local}@{domain}.example", _WORD, _WORD)


@given(
    options=st.lists(st.sampled_from(["-oi", "-t", "-a work", "-f me@x", "-odq", "-F Ann"])),
    recipients=st.lists(_ADDRESS, min_size=1, max_size=4),
)
def test_arguments_without_spaces_come_back_as_they_were(
    options: list[str], recipients: list[str]
) -> None:
    argv = [word for option in options for word in option.split(" ")] + ["--", *recipients]
    assert split_line(" ".join(argv) + "\n").argv == argv
