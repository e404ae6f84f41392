"""Domain features behind plugins/api.py; they import only plugins.api and protocol."""
