"""The optional native decoders (fisherpack/fpk/_native.c). Everything else is in pyproject.toml.

``optional=True``: without a C compiler or Python's headers the build skips the extension and
fisherpack reads the same files with constriction and numpy, about 4 times slower on a large file.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("fisherpack.fpk._native", ["fisherpack/fpk/_native.c"], optional=True)])
