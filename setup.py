"""The compiled part of the package: the tap's fast path (upf_tap/_walk.c).

Everything else is in pyproject.toml. The extension is optional: where it cannot be built
(no C compiler, no Python headers) the install goes on and upf_tap.walk uses its Python
walks, which give the same events (tests/tap/test_accel.py).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("upf_tap._walk", ["upf_tap/_walk.c"], optional=True,
                             extra_compile_args=["-O2", "-std=c11", "-Wall"])])
