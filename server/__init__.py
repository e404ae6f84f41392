"""Banterbox runtime: the WebSocket server, sessions, auth, config, CLI. The only package doing I/O."""
