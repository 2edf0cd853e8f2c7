"""One seed for every random generator a run touches (Python, NumPy, torch on every device), and
deterministic cuDNN kernels: what training, evaluation and loading a checkpoint all need so that
a run, and a random-weight backbone rebuilt from its seed, come out the same every time."""

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
