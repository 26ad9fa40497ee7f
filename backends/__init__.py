"""Execution backends, one module each; installed as ``flowmake.backends``.

A backend implements the small protocol in ``flowmake.backend`` and is registered under the
entry-point group ``flowmake.backends`` so it is imported only when asked for.
"""
