"""Conformance harnesses run against the real server (Autobahn WebSocket testsuite)."""
