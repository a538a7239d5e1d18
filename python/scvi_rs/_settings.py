"""Global configuration: ``scvi_rs.settings`` (same attributes and defaults as ``scvi.settings``)."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np

logger = logging.getLogger("scvi_rs")

_PROGRESS_BAR_STYLES = ("rich", "tqdm")


class ScviConfig:
    """Package-wide settings.

    Parameters
    ----------
    verbosity
        Logging level of the ``scvi_rs`` logger (int or level name).
    progress_bar_style
        ``"tqdm"`` or ``"rich"``; both render with tqdm here.
    batch_size
        Minibatch size used by query methods when ``batch_size=None``.
    seed
        Random seed; setting it seeds Python's ``random``, NumPy's global RNG and torch.
    logging_dir
        Default directory for training logs.
    dl_num_workers
        Default ``num_workers`` of data loaders.
    dl_persistent_workers
        Default ``persistent_workers`` of data loaders.
    warnings_stacklevel
        Stack level used by the library's warnings.
    mlflow_set_tracking_uri
        Accepted for compatibility; MLflow tracking is not supported.
    mlflow_set_experiment
        Accepted for compatibility.
    """

    def __init__(
        self,
        verbosity: int | str = logging.INFO,
        progress_bar_style: str = "tqdm",
        batch_size: int = 128,
        seed: int | None = None,
        logging_dir: str = "./scvi_log/",
        dl_num_workers: int = 0,
        dl_persistent_workers: bool = False,
        warnings_stacklevel: int = 2,
        mlflow_set_tracking_uri: str = "",
        mlflow_set_experiment: str = "mlflow_experiment",
    ) -> None:
        if progress_bar_style not in _PROGRESS_BAR_STYLES:
            raise ValueError("Progress bar style must be in ['rich', 'tqdm']")
        self.verbosity = verbosity
        self.progress_bar_style = progress_bar_style
        self.batch_size = batch_size
        self.seed = seed
        self.logging_dir = logging_dir
        self.dl_num_workers = dl_num_workers
        self.dl_persistent_workers = dl_persistent_workers
        self.warnings_stacklevel = warnings_stacklevel
        self.mlflow_set_tracking_uri = mlflow_set_tracking_uri
        self.mlflow_set_experiment = mlflow_set_experiment
        self._num_threads: int | None = None
        # scvi-tools 1.4.x setting for its JAX models; kept so user code setting it runs.
        self.jax_preallocate_gpu_memory = False

    @property
    def seed(self) -> int | None:
        """Random seed of Python's ``random``, NumPy's global RNG and torch (CPU and CUDA)."""
        return self._seed

    @seed.setter
    def seed(self, seed: int | None) -> None:
        if seed is not None:
            import torch

            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
            random.seed(seed)
            np.random.seed(seed)  # noqa: NPY002 - seeds the global RNG like the reference
            torch.manual_seed(seed)
            logger.info("Seed set to %s", seed)
        self._seed = seed

    @property
    def verbosity(self) -> int:
        """Level of the ``scvi_rs`` logger."""
        return self._verbosity

    @verbosity.setter
    def verbosity(self, level: int | str) -> None:
        if isinstance(level, str):
            level = logging.getLevelName(level.upper())
            if not isinstance(level, int):
                raise ValueError(f"Unknown logging level name: {level!r}")
        self._verbosity = int(level)
        logger.setLevel(self._verbosity)
        if not logger.handlers:
            self.reset_logging_handler()

    def reset_logging_handler(self) -> None:
        """Replace the ``scvi_rs`` logger's first handler with a fresh console handler."""
        if logger.handlers:
            logger.removeHandler(logger.handlers[0])
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)-8s %(message)s"))
        logger.addHandler(handler)

    @property
    def logging_dir(self) -> Path:
        """Directory for training logs, stored as an absolute path."""
        return self._logging_dir

    @logging_dir.setter
    def logging_dir(self, path: str | Path) -> None:
        self._logging_dir = Path(path).resolve()

    @property
    def num_threads(self) -> int | None:
        """Number of torch CPU threads; setting it calls ``torch.set_num_threads``."""
        return self._num_threads

    @num_threads.setter
    def num_threads(self, n: int) -> None:
        import torch

        torch.set_num_threads(n)
        self._num_threads = n

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{name}={getattr(self, name)!r}"
            for name in (
                "verbosity",
                "progress_bar_style",
                "batch_size",
                "seed",
                "logging_dir",
                "dl_num_workers",
                "dl_persistent_workers",
                "warnings_stacklevel",
            )
        )
        return f"ScviConfig({fields})"


settings = ScviConfig()
logger.propagate = False
