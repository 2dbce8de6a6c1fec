"""The app: the ``m2l`` command line, run assembly, every command and the pilot.

The top layer: it may import anything of m2l, and nothing of m2l imports it (tests/test_layers.py).
"""
