"""ASGI entry point, as `django-admin startproject` writes it."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.apps.djproject.settings")

application = get_asgi_application()
