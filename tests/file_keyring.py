"""A python keyring backend reading a JSON file ($RELAYD_TEST_KEYRING), for daemons under test."""

from __future__ import annotations

import json
import os

from keyring.backend import KeyringBackend


class FileKeyring(KeyringBackend):
    """{"SERVICE USER": "password"} in the file $RELAYD_TEST_KEYRING names; read only."""

    priority = 1

    def _entries(self) -> dict[str, str]:
        with open(os.environ["RELAYD_TEST_KEYRING"], encoding="utf-8") as handle:
            entries: dict[str, str] = json.load(handle)
        return entries

    def get_password(self, service: str, username: str) -> str | None:
        return self._entries().get(f"{service} {username}")

    def set_password(self, service: str, username: str, password: str) -> None:
        raise NotImplementedError

    def delete_password(self, service: str, username: str) -> None:
        raise NotImplementedError
