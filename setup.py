"""Only the optional C kernel of the cipher lives here; everything else is in pyproject.toml.
If the compiler is missing the build skips it and encseg uses its numpy path (same bytes, slower)."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "encseg.cipher._blockkernel",
            sources=["src/encseg/cipher/_blockkernel.c"],
            extra_compile_args=["-O3", "-std=c11"],
            optional=True,
        )
    ]
)
