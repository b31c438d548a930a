"""Dataset preparation (``whisperlite data prepare``), the canonical format and the request simulator.

See docs/data.md.
"""
