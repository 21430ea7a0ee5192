"""One rank of a data-parallel trainer-tier run (tests/trainer/test_distributed.py): the tiny plain-torch trainer
in a process group that accelerate sets up from the environment (WORLD_SIZE, RANK, MASTER_ADDR/PORT; gloo on the
CPU). ``python distributed_worker.py <data folder> <per-process batch> <steps> <accum> <out.pt> [options JSON]``: rank
0 writes the trained LoRA state dict and the losses to ``out.pt``; the JSON holds more TrainConfig values."""
import dataclasses
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(os.path.dirname(HERE)), HERE]

import pathlib  # noqa: E402

import torch  # noqa: E402
from tiny_trainer import TinyModel, installed, text_encoder, encoded_dataset  # noqa: E402

from trainer import distributed  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.loop import Trainer  # noqa: E402
from trainer.objectives import DiscreteObjective, ddpm_sigmas  # noqa: E402
from trainer.validation import Validator, split, validation_seed  # noqa: E402


def main(folder, batch, steps, accum, out, options="{}"):
    ctx = distributed.init_from_environment(cpu=True)
    here = pathlib.Path(folder) / f"rank{ctx.rank}"  # each rank writes its own (identical) images
    here.mkdir(parents=True, exist_ok=True)
    data = encoded_dataset(here)
    data = dataclasses.replace(data, dataset=data.dataset.with_group_params(batch_size=int(batch)))
    model = TinyModel()
    net = installed(model)
    cfg = TrainConfig(max_train_steps=int(steps), learning_rate=3e-3, seed=5, gradient_accumulation_steps=int(accum),
                      max_grad_norm=1.0, **json.loads(options))
    data, held_out = split(data, cfg.validation_split, validation_seed(cfg))  # as the session splits
    trainer = Trainer(model=model, network=net, data=data, cfg=cfg, objective=DiscreteObjective(ddpm_sigmas(), "eps"),
                      text_encoder=text_encoder)
    if held_out is not None and cfg.validate_every_n_steps:  # validate_every_n_steps 0 here: split, no validation
        trainer.validator = Validator(held_out, cfg)
    res = trainer.run()
    if ctx.main:
        torch.save({"sd": net.kohya_state_dict(), "losses": res.losses, "world": ctx.world_size,
                    "validation": trainer.validation_losses}, out)
    distributed.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
    # leave without the interpreter's teardown: gloo's threads can make it end in std::terminate after the
    # process group is gone, which would turn a finished run into a failed one
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
