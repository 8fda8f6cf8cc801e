"""conftest.require: a missing system component skips a test locally and fails it under CI=true."""

from __future__ import annotations

import pytest
from conftest import require


def test_present_component_neither_skips_nor_fails(monkeypatch):
    monkeypatch.setenv("CI", "true")
    require("Chromium", True, "apt-get install chromium")


def test_missing_component_skips_locally_and_says_how(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="Chromium is not installed here; apt-get"):
        require("Chromium", False, "apt-get install chromium")


@pytest.mark.parametrize("ci", ["true", "false"])
def test_missing_component_fails_only_under_ci_true(monkeypatch, ci):
    monkeypatch.setenv("CI", ci)
    outcome = pytest.fail.Exception if ci == "true" else pytest.skip.Exception
    with pytest.raises(outcome, match="PostgreSQL cannot be started here; why"):
        require("PostgreSQL", False, "why", problem="cannot be started here")
