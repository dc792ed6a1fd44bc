"""Slide results people read: the one slide-result schema, flags, confidence intervals, reports.

``stats`` and ``flags`` are pure functions on numbers; ``schema`` turns a
slide (analysed in memory or read back from the database) into the one JSON
shape every command and the review station print; ``report`` and
``history`` write HTML pages with PNGs.
"""
