"""``python -m sipgw.sounds``: write the shipped sample.wav again (see __init__.py)."""
import os

from . import HERE, SAMPLE, chord

with open(os.path.join(HERE, SAMPLE), "wb") as f:
    f.write(chord())
