"""The HTTP adapter: ``api.app.create_app`` builds the Flask app; ``farm api`` serves it."""
