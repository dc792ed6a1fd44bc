"""The review station (``smearflow serve``) and the export of verified cells for training.

``app.create_app`` builds the FastAPI application: server-rendered pages
(Jinja2, autoescaped) with one small script, no front-end build step.
``export.export_verified`` writes verified crops as a class-folder dataset.
"""
