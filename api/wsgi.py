"""WSGI entry point for other servers: ``gunicorn api.wsgi:app`` (``farm api`` does not use it)."""

from api.app import create_app

app = create_app()
