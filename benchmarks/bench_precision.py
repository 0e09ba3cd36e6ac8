"""How far bf16 autocast moves denoised values from fp32, in intensity counts.

There is no GPU here, so the comparison runs prediction's own code path (predict.runner.TileRunner) under CPU
autocast with bfloat16, which rounds like CUDA's bf16. An untrained U-Net (depth 2, 32 filters) whose
head bias puts the output near 38,000 counts stands in for a bright pixel.

    .venv/bin/python benchmarks/bench_precision.py
"""

import numpy as np
import torch

from jump_n2v.n2v.model import build_unet
from jump_n2v.predict.runner import TileRunner
from jump_n2v.settings import PredictSettings

torch.manual_seed(0)
torch.set_num_threads(2)
rng = np.random.default_rng(0)
settings = PredictSettings.from_dict({"device": "cpu", "tile_size": 256})
for mean, std in [(30000.0, 5000.0), (2000.0, 400.0)]:
    net = build_unet(2, 32, "n2v").eval()
    with torch.no_grad():
        net.head.bias += (38000 - mean) / std
    image = rng.normal(38000, 300, size=(256, 256)).astype(np.float32)
    fp32 = TileRunner(net, settings).denoise(image, mean, std)
    runner = TileRunner(net, settings)
    runner.autocast_dtype = torch.bfloat16
    difference = np.abs(runner.denoise(image, mean, std) - fp32)
    print(f"normalisation mean {mean:g} std {std:g}, output ~{fp32.mean():.0f} counts: "
          f"|bf16 - fp32| max {difference.max():.1f}, mean {difference.mean():.2f} counts")
