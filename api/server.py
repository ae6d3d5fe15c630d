"""gunicorn run in the ``farm api`` process (no exec), so the settings are loaded once: the
master reads its logging config from them and each forked worker builds its app from them."""

from __future__ import annotations

from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

import api.gunicorn_conf
from api.app import create_app
from farm.config import Settings


class FarmServer(BaseApplication):  # type: ignore[misc]  # gunicorn ships no type hints
    def __init__(self, settings: Settings, options: dict[str, Any]) -> None:
        self.settings = settings
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        # What `--config python:api.gunicorn_conf` did: every gunicorn setting the module names.
        conf = {k: v for k, v in vars(api.gunicorn_conf).items() if k in self.cfg.settings}
        conf["logconfig_dict"] = api.gunicorn_conf.logging_config(self.settings)
        for name, value in {**conf, **self.options}.items():
            self.cfg.set(name, value)

    def load(self) -> Flask:
        return create_app(self.settings)  # in each worker, after the fork


def serve(settings: Settings, *, bind: str, workers: int) -> None:
    options = {"bind": [bind], "workers": workers, "timeout": 60, "accesslog": "-"}
    FarmServer(settings, options).run()
