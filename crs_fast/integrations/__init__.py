"""Drop-in patches: ``crs_fast.integrations.verl``, ``.openrlhf``, ``.trl`` and ``.hf``.

Each framework module has ``patch()``, ``unpatch()`` and ``patched()`` (a context manager).
A patch replaces functions with crs_fast versions of the same signature and the same numbers,
checks the installed version against the range it was tested with, is harmless when applied
twice, and ``unpatch()`` restores the exact original objects.
"""
