"""The model: sources, runtimes, conversion and its cache, the call queue, the lifecycle."""

# Bridge until the restructuring lands: this package shadows the module function/model.py, which
# function/pipeline.py and the tests still import as ``function.model``. While that file exists, its
# names are re-exported from here, so the rest of the app (and tests/conftest.py) keeps importing.
# Once function/model.py has moved into this package, these lines do nothing; drop them at merge.
import os as _os

if _os.path.isfile(_os.path.join(_os.path.dirname(_os.path.dirname(__file__)), "model.py")):
    import importlib.util as _util
    import sys as _sys

    _spec = _util.spec_from_file_location(
        "function._model_tf", _os.path.join(_os.path.dirname(_os.path.dirname(__file__)), "model.py"))
    _legacy = _util.module_from_spec(_spec)  # type: ignore[arg-type]
    _sys.modules["function._model_tf"] = _legacy
    _spec.loader.exec_module(_legacy)  # type: ignore[union-attr]
    BirdModel = _legacy.BirdModel
    ModelError = _legacy.ModelError
    IMAGE_SIZE = _legacy.IMAGE_SIZE
    SIGNATURE_PREFERENCE = _legacy.SIGNATURE_PREFERENCE
