"""Settings for the test Django project: no database, no apps, no middleware."""

from __future__ import annotations

SECRET_KEY = "threshold-tests-not-secret"
DEBUG = False
# Let view errors reach the server, which must answer 500 itself (Django would hide them).
DEBUG_PROPAGATE_EXCEPTIONS = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "tests.apps.djproject.urls"
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
WSGI_APPLICATION = "tests.apps.djproject.wsgi.application"
ASGI_APPLICATION = "tests.apps.djproject.asgi.application"
