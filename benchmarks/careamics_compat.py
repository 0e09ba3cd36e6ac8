"""Running CAREamics 0.3.5 beside the CPU build of torch, for the benchmarks.

CAREamics imports torchvision at module level, but only its LVAE models use it (center_crop).
PyPI's torchvision for this torch pulls a CUDA torch build, so the bench venv has none and the N2V
path runs with a stub. Lightning and torchmetrics are imported first so they still see it absent.
"""

import importlib.machinery
import sys
import types


def stub_torchvision() -> None:
    try:
        import torchvision  # noqa: F401

        return
    except ImportError:
        pass
    import lightning.pytorch  # noqa: F401
    import torchmetrics  # noqa: F401

    def unavailable(*args, **kwargs):
        raise RuntimeError("torchvision is stubbed in this benchmark: only CAREamics' LVAE models need it")

    names = ("torchvision", "torchvision.transforms", "torchvision.transforms.functional")
    modules = {name: types.ModuleType(name) for name in names}
    modules["torchvision"].__version__ = "0+stub"
    modules["torchvision"].transforms = modules["torchvision.transforms"]
    modules["torchvision.transforms"].functional = modules["torchvision.transforms.functional"]
    modules["torchvision.transforms.functional"].center_crop = unavailable
    for name, module in modules.items():
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
        sys.modules[name] = module
