"""Editing a real scan (SPEC 13): label-map edits in mm, the edit region, and RePaint-style regeneration."""
