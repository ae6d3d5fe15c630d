"""The domain package stays free of the web and queue frameworks; settings parse strictly."""

from __future__ import annotations

import subprocess
import sys

import pytest

from farm.config import SettingsError, load_settings


def test_farm_imports_neither_flask_nor_celery() -> None:
    code = (
        "import pkgutil, importlib, sys, farm\n"
        "for m in pkgutil.walk_packages(farm.__path__, 'farm.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('flask', 'celery', 'kombu'))\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_settings_come_from_farm_variables_only() -> None:
    settings = load_settings(
        {
            "FARM_PARALLELISM": "4",
            "FARM_S3_SECURE": "true",
            "FARM_WEBHOOK_RETRY_DELAYS": "1,2.5",
            "PARALLELISM": "9",
        }
    )
    assert settings.parallelism == 4 and settings.s3_secure is True
    assert settings.webhook_retry_delays == (1.0, 2.5)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FARM_PARALLELISM", "many"),
        ("FARM_S3_SECURE", "perhaps"),
        ("FARM_SANDBOX", "docker"),
        ("FARM_RENDERER", "vulkan"),
    ],
)
def test_garbage_settings_are_refused(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        load_settings({name: value})
