"""Reference definitions of the lightweight CNN families, behind one registry.

>>> from edgekit.models import create_model, list_models
>>> len(list_models("ghostnet*")) > 0
True
"""
from .arch import ArchSpec, BlockSpec, HeadSpec, StemSpec, block_types, from_arch
from .profile import Profile, count_params, profile_model, profile_name
from .registry import ModelCfg, create_model, get_cfg, list_models, register_model

# Every family is imported here, so no registered name can be missing because nothing imported it.
from . import espnet, fbnet, efficientnet, ghostnet  # noqa: E402,F401  (registers the variants)

__all__ = ["ArchSpec", "BlockSpec", "HeadSpec", "StemSpec", "ModelCfg", "Profile", "block_types",
           "count_params", "create_model", "from_arch", "get_cfg", "list_models", "profile_model",
           "profile_name", "register_model"]
