"""Build: Cython wrappers in fastproxy/_native over plain C99 in csrc/.

A C or Cython error fails the build; there is no pure-Python fallback.
Switches (as uvloop's build_ext does):
  --cython-always    regenerate the C from the .pyx even when it looks current
  --cython-annotate  write Cython's annotated HTML next to each .pyx
  --debug-native     -O0 -g and assertions, for gdb/valgrind
"""
import os
import platform

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext as _build_ext

CFLAGS = ["-std=gnu99", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter",
          "-Wno-unused-function", "-fno-strict-aliasing"]
# The HTTP/1 scanners have an SSE4.2 path chosen at build time (csrc/http1.h).
# Every x86-64 server CPU since 2008 has it (x86-64-v2); FASTPROXY_PORTABLE=1
# builds the scalar path for older ones.
if platform.machine() in ("x86_64", "AMD64") and not os.environ.get("FASTPROXY_PORTABLE"):
    CFLAGS.append("-msse4.2")

NATIVE = {
    # module: the csrc files it wraps
    "shm": ["csrc/shmtable.c"],
    "relay": ["csrc/relay.c", "csrc/engine.c", "csrc/sockops.c"],  # L4 path: splice pump, epoll engine, socket seam
    "http1": ["csrc/http1.c"],
    "rewrite": ["csrc/rewrite.c", "csrc/http1.c"],  # parses, then rewrites: links the parser
    "detect": ["csrc/detect.c"],  # protocol detection from the first bytes
    # L7 path: the HTTP/1.1 proxy engine and everything it drives
    "h1proxy": ["csrc/h1proxy.c", "csrc/http1.c", "csrc/rewrite.c", "csrc/detect.c", "csrc/sockops.c",
                "csrc/govern.c"],
    # traffic governance: the shared segment (mapped with shmtable.c's helpers)
    "govern": ["csrc/govern.c", "csrc/shmtable.c"],
}


class build_ext(_build_ext):
    user_options = _build_ext.user_options + [
        ("cython-always", None, "regenerate C from .pyx unconditionally"),
        ("cython-annotate", None, "emit Cython annotated HTML"),
        ("debug-native", None, "build the C without optimisation, with asserts"),
    ]
    boolean_options = _build_ext.boolean_options + ["cython-always", "cython-annotate", "debug-native"]

    def initialize_options(self):
        super().initialize_options()
        self.cython_always = False
        self.cython_annotate = False
        self.debug_native = bool(os.environ.get("FASTPROXY_DEBUG_BUILD"))

    def finalize_options(self):
        from Cython.Build import cythonize

        directives = {"language_level": "3", "boundscheck": False, "wraparound": False,
                      "cdivision": True, "embedsignature": True}
        self.distribution.ext_modules = cythonize(
            self.distribution.ext_modules, compiler_directives=directives,
            force=self.cython_always, annotate=self.cython_annotate)
        super().finalize_options()

    def build_extensions(self):
        for ext in self.extensions:
            if self.debug_native:
                ext.extra_compile_args = [f for f in ext.extra_compile_args if not f.startswith("-O")]
                ext.extra_compile_args += ["-O0", "-g3", "-UNDEBUG"]
        super().build_extensions()


setup(
    ext_modules=[
        Extension(f"fastproxy._native.{name}", [f"fastproxy/_native/{name}.pyx", *srcs],
                  include_dirs=["csrc"], extra_compile_args=CFLAGS)
        for name, srcs in NATIVE.items()
    ],
    cmdclass={"build_ext": build_ext},
)
