"""Export: merge, quantize (bnb, llmcompressor), GGUF/Ollama, with a report and a lineage record (run.py).

The package shares its name with the API function `tunesmith.export`: importing any module of this package makes
Python bind `tunesmith.export` to the package, which would hide the function (`from tunesmith import export` then gave
a module once anything had exported). So the package is callable as that function.
"""

import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, cfg):
        from tunesmith.api import export

        return export(cfg)


sys.modules[__name__].__class__ = _CallablePackage
