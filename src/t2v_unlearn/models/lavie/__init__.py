"""LaVie's base text-to-video model: the 3-D UNet, checkpoint loading and the sampling pipeline."""

from .convert import lavie_unet_from_state_dict, load_lavie_checkpoint
from .pipeline import LaViePipeline, LaViePipelineOutput, lavie_scheduler
from .unet import LaVieUNet3DConditionModel

__all__ = [
    "LaViePipeline",
    "LaViePipelineOutput",
    "LaVieUNet3DConditionModel",
    "lavie_scheduler",
    "lavie_unet_from_state_dict",
    "load_lavie_checkpoint",
]
