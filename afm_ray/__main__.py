"""``python -m afm_ray …``: the ``afm-ray`` command line without its console script (e.g. from a PYTHONPATH)."""

from afm_ray.cli import run

run()
