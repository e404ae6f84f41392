"""Clients that ship with Banterbox: the IRC chat bridge (Python, `python -m clients.irc`); the
JavaScript and C# clients live beside it. Nothing here is imported by the server."""
