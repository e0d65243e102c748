"""afm-ray: simulate AFM image stacks on many GPUs and train CNNs that read 3D molecular structure.

The package follows the data flow, one module per stage, each usable without Ray:
``molecules`` → ``sim`` → ``descriptors`` → ``augment`` → ``models`` → ``losses`` → ``train``.
"""

__version__ = "0.1.0"
