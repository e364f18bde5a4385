"""Export: merge, quantize (bnb, llmcompressor), GGUF/Ollama, with a report and a lineage record (run.py).

The package shares its name with the API function `tunesmith.export`: importing any module of this package makes
Python bind `tunesmith.export` to the package, which would hide the function (`from tunesmith import export` then gave
a module once anything had exported). So the package is callable as that function.
"""

from tunesmith.api_package import callable_as_api_function

callable_as_api_function(__name__)

