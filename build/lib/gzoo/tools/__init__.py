"""Developer tools: not part of the library; run as python -m gzoo.tools.<name>."""
