"""edgekit: lightweight CNNs from reference definition to int8 file on the device.

>>> import edgekit
>>> model = edgekit.create_model("ghostnet_1_0", num_classes=10, in_chans=1, resolution=64)
"""
from .models import ArchSpec, create_model, from_arch, list_models, profile_name

__version__ = "0.1.0"
__all__ = ["ArchSpec", "create_model", "from_arch", "list_models", "profile_name", "export", "run", "validate",
           "__version__"]

# The functions the CLI calls. Imported here, after the submodules of the same name, so that
# ``edgekit.export`` and ``edgekit.validate`` stay the functions once those modules are loaded.
from .export import export  # noqa: E402
from .validate import validate  # noqa: E402
from .devices.measure import measure as run  # noqa: E402
