"""Banterbox runtime: WebSocket server, sessions, auth, config, CLI; the only package doing I/O."""
