"""A python keyring backend on a JSON file ($RELAYD_TEST_KEYRING), for processes under test."""

from __future__ import annotations

import json
import os

from keyring.backend import KeyringBackend


class FileKeyring(KeyringBackend):
    """{"SERVICE USER": "password"} in the file $RELAYD_TEST_KEYRING names (mode 0600);
    `set_password` rewrites the file (created when missing) through a rename."""

    priority = 1

    def _entries(self) -> dict[str, str]:
        try:
            with open(os.environ["RELAYD_TEST_KEYRING"], encoding="utf-8") as handle:
                entries: dict[str, str] = json.load(handle)
        except FileNotFoundError:
            return {}
        return entries

    def get_password(self, service: str, username: str) -> str | None:
        return self._entries().get(f"{service} {username}")

    def set_password(self, service: str, username: str, password: str) -> None:
        entries = self._entries()
        entries[f"{service} {username}"] = password
        path = os.environ["RELAYD_TEST_KEYRING"]
        fd = os.open(path + ".new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(entries, handle)
        os.replace(path + ".new", path)

    def delete_password(self, service: str, username: str) -> None:
        raise NotImplementedError
