"""A minimal Django project (no database) served by Threshold in tests/e2e/test_frameworks.py."""
