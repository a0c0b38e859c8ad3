"""`python -m common.export`: see the package docstring of `common.export`."""

from __future__ import annotations

import pickle

from common import console
from common.export import FORMATS, run


def main(argv) -> None:
    from absl import flags

    if len(argv) > 1:
        raise SystemExit(f"common.export: error: unexpected arguments {argv[1:]}")
    console.quiet()
    f = flags.FLAGS
    try:
        print(
            run(f.format, f.out, config=f.config, workdir=f.workdir, step=f.step,
                haiku_checkpoint=f.haiku_checkpoint, network=f.network, classifier=f.classifier)
        )  # fmt: skip
    except (ValueError, FileNotFoundError, ImportError, pickle.UnpicklingError, EOFError) as e:
        raise SystemExit(f"common.export: error: {str(e).splitlines()[0]}") from None


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "experiments/<name>.py:<variant> of the run")
    flags.DEFINE_string("workdir", None, "the training run's workdir (holds checkpoints/)")
    flags.DEFINE_integer("step", None, "checkpoint step (default: the latest)")
    flags.DEFINE_string("haiku_checkpoint", None, "a DeepMind BYOL/DetCon Haiku .pkl/.npy instead")
    flags.DEFINE_string("format", None, f"output format: {', '.join(FORMATS)}")
    flags.DEFINE_string("out", None, "output file")
    flags.DEFINE_string("network", "online", "which network: online, target, ...")
    flags.DEFINE_bool("classifier", False, "torchvision: add the online linear monitor as fc")
    flags.mark_flags_as_required(["format", "out"])
    app.run(main)
