"""Unlearn a concept in the shared text encoder and measure it on videos.

    python train.py concept=eiffel shots=2
    python train.py concept=snoopy_mickey model=lavie model.backend.sd_path=/path/to/sd15
    python train.py -m concept=snoopy,eiffel seed=0,1,2
"""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import t2v_unlearn.resolvers  # noqa: F401  (registers ${join_keys:...} and ${sweep_group:})


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> dict:
    # Imported here, after Hydra has parsed the command line: torch, Lightning and diffusers take
    # several seconds to import, and a mistyped override should fail at once.
    from t2v_unlearn.run import INPUT_ERRORS, run

    hydra_config = HydraConfig.get()
    try:
        return run(cfg, hydra_config.runtime.output_dir)
    except INPUT_ERRORS as error:
        # In a multirun the error goes back to Hydra, which records the failed job. A single run
        # prints only the message: it names the value and the fix, and a traceback would bury it.
        if hydra_config.mode == RunMode.MULTIRUN:
            raise
        sys.exit(f"Error: {type(error).__name__}: {error}")


if __name__ == "__main__":
    main()
