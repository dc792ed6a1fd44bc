"""Groups of ``smearflow`` sub-commands; each module has ``register(app)``."""
