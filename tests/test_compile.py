"""torch.compile of the UNet (``compile_unet``): the compiled training step agrees with the eager one, and
checkpoints, validation images and the held-out loss do not recompile it (they run the eager forward)."""

from __future__ import annotations

import pytest
import torch

from cartoonify.training.callbacks import TrainerCallback
from cartoonify.training.logs import read_loss_log
from cartoonify.training.run import build_trainer

pytestmark = pytest.mark.slow  # compiling the tiny UNet takes a minute or two on a CPU


class GraphCount(TrainerCallback):
    """Dynamo's count of compiled graphs after each step."""

    def __init__(self):
        self.after_step: dict[int, int] = {}

    def on_step_end(self, trainer, row):
        from torch._dynamo.utils import counters

        self.after_step[trainer.global_step] = counters["stats"]["unique_graphs"]


def test_compiled_steps_agree_with_eager_and_sampling_does_not_recompile(small_config, tmp_path):
    import torch._dynamo
    from torch._dynamo.utils import counters

    settings = dict(max_train_steps=4, checkpointing_steps=2, num_validation_images=1, validation_inference_steps=2,
                    holdout_images=2, save_final_pipeline=False)
    eager = build_trainer(small_config(**settings, output_dir=str(tmp_path / "eager")), progress=False).run()
    torch._dynamo.reset()
    counters.clear()
    graphs = GraphCount()
    compiled = build_trainer(small_config(**settings, output_dir=str(tmp_path / "compiled"), compile_unet=True),
                             progress=False, callbacks=[graphs]).run()
    a, b = read_loss_log(eager.log_csv), read_loss_log(compiled.log_csv)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4]
    torch.testing.assert_close([r["loss"] for r in b], [r["loss"] for r in a], rtol=1e-3, atol=1e-5)
    assert graphs.after_step[1] >= 1  # the step was compiled
    # checkpoints (steps 2, 4), validation images and the held-out loss ran in between: no new graph
    assert graphs.after_step[4] == graphs.after_step[1], graphs.after_step
