"""Models with Pyro modules: SVI training, guide warm-up callbacks and posterior sampling."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..._settings import settings
from ...dataloaders import DataSplitter, DeviceBackedDataSplitter
from ...module.base._pyro import require_pyro
from ...train import TrainRunner
from ...train._callbacks import Callback
from ...train._config import merge_kwargs
from ...train._device import parse_device_args
from ...train._pyro_trainingplan import PyroTrainingPlan
from ...utils import track
from ._training_mixin import get_max_epochs_heuristic

if TYPE_CHECKING:
    from anndata import AnnData

    from ...dataloaders import AnnDataLoader
    from ...module.base import PyroBaseModuleClass

logger = logging.getLogger("scvi_rs")

_DEFAULT_SUMMARIES: dict[str, Callable[..., np.ndarray]] = {
    "post_sample_means": np.mean,
    "post_sample_stds": np.std,
    "post_sample_q05": lambda x, axis: np.quantile(x, 0.05, axis=axis),
    "post_sample_q95": lambda x, axis: np.quantile(x, 0.95, axis=axis),
}


def _run_guide_on_first_batch(pl_module: Any, loader: Iterable) -> None:
    """Call the module's guide on the first minibatch of ``loader`` (creates its parameters)."""
    for tensors in loader:
        device = pl_module.device
        batch = {key: value.to(device) for key, value in tensors.items()}
        args, kwargs = pl_module.module._get_fn_args_from_batch(batch)
        pl_module.module.guide(*args, **kwargs)
        return
    raise ValueError("The warm-up dataloader yielded no minibatch to run the Pyro guide on.")


class PyroJitGuideWarmup(Callback):
    """Run the guide on one minibatch when training starts, so its parameters exist.

    AutoGuides create their parameters on first use; a JIT-compiled ELBO needs them before
    it traces. The minibatch comes from ``dataloader``, else from the trainer's data module.

    Parameters
    ----------
    dataloader
        Loader of the warm-up minibatch; the data module's training loader when None.
    """

    def __init__(self, dataloader: AnnDataLoader | None = None) -> None:
        require_pyro(type(self).__name__)
        super().__init__()
        self.dataloader = dataloader

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """Run the guide on the first training minibatch, on the training device."""
        loader = self.dataloader
        if loader is None:
            datamodule = getattr(trainer, "datamodule", None)
            if datamodule is None:
                loader = trainer.train_dataloader
            else:
                loader = datamodule.train_dataloader()
        _run_guide_on_first_batch(pl_module, loader)


class PyroModelGuideWarmup(Callback):
    """Run the guide on one minibatch at setup, before the optimizer is built.

    :class:`~scvi_rs.train.LowLevelPyroTrainingPlan` optimises the module's parameters with
    a torch optimizer, so an AutoGuide's parameters must exist before it is configured.

    Parameters
    ----------
    dataloader
        Loader of the warm-up minibatch.
    """

    def __init__(self, dataloader: AnnDataLoader) -> None:
        require_pyro(type(self).__name__)
        super().__init__()
        self.dataloader = dataloader

    def setup(self, trainer: Any, pl_module: Any, stage: str | None = None) -> None:
        """At the ``"fit"`` setup, run the guide on the first minibatch of the loader."""
        if stage == "fit":
            _run_guide_on_first_batch(pl_module, self.dataloader)


class PyroSviTrainMixin:
    """Adds ``train`` to models with a Pyro module: stochastic variational inference.

    Trains on minibatches, or, with ``batch_size=None``, on data copied to the device once.
    """

    _data_splitter_cls = DataSplitter
    _training_plan_cls = PyroTrainingPlan
    _train_runner_cls = TrainRunner

    def train(
        self,
        max_epochs: int | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
        train_size: float | None = None,
        validation_size: float | None = None,
        shuffle_set_split: bool = True,
        batch_size: int | None = 128,
        early_stopping: bool = False,
        lr: float | None = None,
        training_plan: PyroTrainingPlan | None = None,
        datasplitter_kwargs: dict | None = None,
        plan_config: Any = None,
        plan_kwargs: Any = None,
        trainer_config: Any = None,
        **trainer_kwargs: Any,
    ) -> None:
        """Train the model with SVI.

        Parameters
        ----------
        max_epochs
            Number of passes through the data; by default
            ``min(round(20000 / n_cells * 1000), 1000)``.
        accelerator
            ``"auto"``, ``"cpu"``, ``"gpu"`` or ``"cuda"``.
        device
            The device to train on (``"auto"``, an index or a device string).
        train_size
            Fraction of cells for training (0.9 when None).
        validation_size
            Fraction for validation; the rest of ``train_size`` when None.
        shuffle_set_split
            Shuffle cells before splitting; else split in order.
        batch_size
            Minibatch size; None loads every set onto the device once
            (:class:`~scvi_rs.dataloaders.DeviceBackedDataSplitter`).
        early_stopping
            Stop when ``early_stopping_monitor`` stops improving.
        lr
            Learning rate of the default optimizer (:class:`pyro.optim.Adam`); ignored when
            ``plan_kwargs`` names an ``optim``.
        training_plan
            A ready :class:`~scvi_rs.train.PyroTrainingPlan`; built from ``plan_kwargs``
            when None.
        datasplitter_kwargs
            Further arguments of the data splitter.
        plan_config
            Config of training-plan arguments (``plan_kwargs`` and ``lr`` win over it).
        plan_kwargs
            Arguments of :class:`~scvi_rs.train.PyroTrainingPlan`.
        trainer_config
            Config of trainer arguments (``trainer_kwargs`` win over it).
        **trainer_kwargs
            Arguments of :class:`~scvi_rs.train.Trainer`.
        """
        require_pyro(f"{type(self).__name__}.train")
        if max_epochs is None:
            max_epochs = get_max_epochs_heuristic(self.adata.n_obs, epochs_cap=1000)

        plan_kwargs = merge_kwargs(plan_config, plan_kwargs, name="plan")
        if lr is not None and "optim" not in plan_kwargs:
            plan_kwargs["optim_kwargs"] = {"lr": lr}
        datasplitter_kwargs = dict(datasplitter_kwargs or {})

        if batch_size is None:
            data_splitter = DeviceBackedDataSplitter(
                self.adata_manager,
                train_size=train_size,
                validation_size=validation_size,
                batch_size=batch_size,
                accelerator=accelerator,
                device=device,
                **datasplitter_kwargs,
            )
        else:
            data_splitter = self._data_splitter_cls(
                self.adata_manager,
                train_size=train_size,
                validation_size=validation_size,
                shuffle_set_split=shuffle_set_split,
                batch_size=batch_size,
                **datasplitter_kwargs,
            )

        if training_plan is None:
            training_plan = self._training_plan_cls(self.module, **plan_kwargs)

        trainer_kwargs.setdefault("early_stopping", early_stopping)
        trainer_kwargs["callbacks"] = [
            *(trainer_kwargs.get("callbacks") or []),
            PyroJitGuideWarmup(),
        ]

        runner = self._train_runner_cls(
            self,
            training_plan=training_plan,
            data_splitter=data_splitter,
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=device,
            trainer_config=trainer_config,
            **trainer_kwargs,
        )
        return runner()


def _is_plate(site: dict[str, Any]) -> bool:
    from pyro import poutine

    return isinstance(site.get("fn"), poutine.subsample_messenger._Subsample)


def _is_deterministic(site: dict[str, Any]) -> bool:
    return bool((site.get("infer") or {}).get("_deterministic", False))


def _is_sampled_site(site: dict[str, Any], return_observed: bool) -> bool:
    """A sample site worth returning: latent (or observed, if asked) or deterministic."""
    if site["type"] != "sample" or _is_plate(site):
        return False
    observed = site.get("is_observed", True)
    return (not observed) or return_observed or _is_deterministic(site)


class PyroSampleMixin:
    """Adds posterior sampling (``sample_posterior``) to models with a Pyro module.

    Works on minibatches and on the whole data: sites inside the observation plate (named
    by the module's ``list_obs_plate_vars["name"]``) are sampled per minibatch and joined
    along the plate; the other (global) sites are sampled once.
    """

    @torch.inference_mode()
    def _get_one_posterior_sample(
        self,
        args: Iterable,
        kwargs: dict[str, Any],
        model: PyroBaseModuleClass | Callable | None = None,
        return_sites: list | None = None,
        return_observed: bool = False,
        exclude_vars: list | None = None,
    ) -> dict[str, np.ndarray]:
        """Draw one sample of the posterior: the guide, then the model replayed on it.

        Parameters
        ----------
        args, kwargs
            Arguments of the model and the guide.
        model
            The Pyro model; ``self.module.model`` when None.
        return_sites
            Sites to keep; all when None.
        return_observed
            Also keep observed sites.
        exclude_vars
            Sites to leave out.

        Returns
        -------
        dict
            Site name to a numpy array of its sampled value.
        """
        from pyro import poutine

        model = self.module.model if model is None else model
        guide = self.module.guide
        if isinstance(guide, poutine.messenger.Messenger):
            # such guides already trace and replay the model themselves
            sample = dict(guide(*args, **kwargs))
            sample = {
                name: value
                for name, value in sample.items()
                if (return_sites is None or name in return_sites)
                and (exclude_vars is None or name not in exclude_vars)
            }
        else:
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            model_trace = poutine.trace(poutine.replay(model, guide_trace)).get_trace(
                *args, **kwargs
            )
            sample = {
                name: site["value"]
                for name, site in model_trace.nodes.items()
                if _is_sampled_site(site, return_observed)
                and (exclude_vars is None or name not in exclude_vars)
                and (return_sites is None or name in return_sites)
            }
        return {name: value.cpu().numpy() for name, value in sample.items()}

    def _get_posterior_samples(
        self,
        args: Iterable,
        kwargs: dict[str, Any],
        model: PyroBaseModuleClass | Callable | None = None,
        num_samples: int = 1000,
        return_sites: list | None = None,
        exclude_vars: list | None = None,
        return_observed: bool = False,
        show_progress: bool = True,
    ) -> dict[str, np.ndarray]:
        """Draw ``num_samples`` samples of the posterior.

        Parameters
        ----------
        args, kwargs
            Arguments of the model and the guide.
        model
            The Pyro model; ``self.module.model`` when None.
        num_samples
            Number of samples.
        return_sites
            Sites to keep; all when None.
        exclude_vars
            Sites to leave out.
        return_observed
            Also keep observed sites.
        show_progress
            Show a progress bar.

        Returns
        -------
        dict
            Site name to an array of its samples stacked along a new first dimension.
        """
        if num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {num_samples}.")
        draw = {
            "model": model,
            "return_sites": return_sites,
            "return_observed": return_observed,
            "exclude_vars": exclude_vars,
        }
        first = self._get_one_posterior_sample(args, kwargs, **draw)
        samples = {name: [value] for name, value in first.items()}
        for _ in track(
            range(1, num_samples),
            style="tqdm",
            description="Sampling global variables, sample: ",
            disable=not show_progress,
        ):
            for name, value in self._get_one_posterior_sample(args, kwargs, **draw).items():
                samples[name].append(value)
        return {name: np.array(values) for name, values in samples.items()}

    def _get_return_sites(self, return_sites: list | None, valid_sites: list) -> list:
        """The requested sites among ``valid_sites`` (all of them when none are requested)."""
        if return_sites is None:
            return list(valid_sites)
        requested = np.asarray(return_sites)
        return list(requested[np.isin(requested, valid_sites)])

    def _get_obs_plate_sites(
        self,
        args: Iterable,
        kwargs: dict[str, Any],
        return_observed: bool = False,
    ) -> dict[str, int]:
        """The model's sites inside the observation plate, with the plate's axis in each.

        The plate is ``self.module.list_obs_plate_vars["name"]``; its optional
        ``"event_dim"`` counts event dimensions right of the plate.

        Parameters
        ----------
        args, kwargs
            Arguments of the model.
        return_observed
            Also include observed sites.

        Returns
        -------
        dict
            Site name to the (negative) axis of the plate in its value.
        """
        from pyro import poutine

        plate_vars = self.module.list_obs_plate_vars
        plate_name = plate_vars["name"]
        event_dim = plate_vars.get("event_dim", 0)
        trace = poutine.trace(self.module.model).get_trace(*args, **kwargs)
        obs_plate: dict[str, int] = {}
        for name, site in trace.nodes.items():
            if not _is_sampled_site(site, return_observed):
                continue
            frames = [frame for frame in site["cond_indep_stack"] if frame.name == plate_name]
            if frames:
                obs_plate[name] = frames[0].dim - event_dim
        return obs_plate

    def _get_valid_sites(
        self,
        args: Iterable,
        kwargs: dict[str, Any],
        return_observed: bool = False,
    ) -> list[str]:
        """The model's sites worth sampling (latent, observed if asked, deterministic).

        Parameters
        ----------
        args, kwargs
            Arguments of the model.
        return_observed
            Also include observed sites.

        Returns
        -------
        list
            Site names, in the order the model visits them.
        """
        from pyro import poutine

        trace = poutine.trace(self.module.model).get_trace(*args, **kwargs)
        return [
            name for name, site in trace.nodes.items() if _is_sampled_site(site, return_observed)
        ]

    def _posterior_samples_minibatch(
        self,
        adata: AnnData | None = None,
        input_dl: AnnDataLoader | None = None,
        indices: np.ndarray | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
        batch_size: int | None = None,
        summary_frequency: int | None = None,
        summary_fun: dict[str, Callable] | None = None,
        return_samples: bool = False,
        **sample_kwargs: Any,
    ) -> dict[str, dict[str, np.ndarray]]:
        """Summaries of posterior samples, the observation-plate sites drawn per minibatch.

        Parameters
        ----------
        adata
            AnnData to sample for; the model's when None.
        input_dl
            Loader of the minibatches; built from ``adata`` and ``indices`` when None.
        indices
            Cells to sample for; all when None.
        accelerator, device
            Where to sample.
        batch_size
            Minibatch size; ``settings.batch_size`` when None.
        summary_frequency
            Summarise (and drop) the samples every this many minibatches, to save memory.
        summary_fun
            Summary name to ``fn(samples, axis=0)``; means, standard deviations and the 5%
            and 95% quantiles by default.
        return_samples
            Also return the samples themselves, as ``"posterior_samples"``.
        **sample_kwargs
            Arguments of :meth:`_get_posterior_samples` (``num_samples``, ``return_sites``,
            ``return_observed``, ...).

        Returns
        -------
        dict
            Summary name to a dict of site name to array.
        """
        require_pyro(f"{type(self).__name__}.sample_posterior")
        summary_fun = dict(_DEFAULT_SUMMARIES if summary_fun is None else summary_fun)
        if return_samples:
            summary_fun["posterior_samples"] = lambda x, axis: x
        _, _, torch_device = parse_device_args(
            accelerator, device, return_device="torch", validate_single_device=True
        )
        batch_size = settings.batch_size if batch_size is None else batch_size
        if input_dl is None:
            adata = self._validate_anndata(adata)
            indices = np.arange(adata.n_obs) if indices is None else indices
            loader = self._make_data_loader(
                adata=adata, indices=indices, shuffle=False, batch_size=batch_size
            )
        else:
            loader = input_dl
        return_observed = sample_kwargs.get("return_observed", False)
        return_sites = sample_kwargs.get("return_sites")
        self.to_device(torch_device)

        results: dict[str, dict[str, np.ndarray]] = {}
        local_samples: dict[str, np.ndarray] = {}
        obs_plate_sites: dict[str, int] | None = None
        local_kwargs: dict[str, Any] = {}
        args, kwargs = None, None

        def summarise() -> None:
            for site, values in local_samples.items():
                summary = {name: fn(values, axis=0) for name, fn in summary_fun.items()}
                if site in results:
                    axis = obs_plate_sites[site]
                    summary = {
                        name: np.concatenate([results[site][name], value], axis=axis)
                        for name, value in summary.items()
                    }
                results[site] = summary
            local_samples.clear()

        n_batches = 0
        for tensor_dict in track(
            loader, style="tqdm", description="Sampling local variables, batch: "
        ):
            args, kwargs = self._batch_inputs(tensor_dict, torch_device)
            if obs_plate_sites is None:
                obs_plate_sites = self._get_obs_plate_sites(
                    args, kwargs, return_observed=return_observed
                )
                valid_sites = self._get_valid_sites(args, kwargs, return_observed=return_observed)
                obs_plate_sites = {k: v for k, v in obs_plate_sites.items() if k in valid_sites}
                local_kwargs = {
                    **sample_kwargs,
                    "return_sites": self._get_return_sites(return_sites, list(obs_plate_sites)),
                    "show_progress": False,
                }
            if not local_kwargs["return_sites"]:
                break  # no local sites to sample
            drawn = self._get_posterior_samples(args, kwargs, **local_kwargs)
            if local_samples:
                # join this minibatch's cells to the previous ones; the plate axis counts
                # from the right, so it is the same in the stacked samples
                drawn = {
                    site: np.concatenate([local_samples[site], values], axis=obs_plate_sites[site])
                    for site, values in drawn.items()
                }
            local_samples = drawn
            n_batches += 1
            if summary_frequency is not None and n_batches % summary_frequency == 0:
                summarise()
        if args is None:
            raise ValueError("There are no cells to sample the posterior for.")
        summarise()

        valid_sites = self._get_valid_sites(args, kwargs, return_observed=return_observed)
        global_sites = [site for site in valid_sites if site not in obs_plate_sites]
        global_kwargs = {
            **sample_kwargs,
            "return_sites": self._get_return_sites(return_sites, global_sites),
        }
        if global_kwargs["return_sites"]:
            global_samples = self._get_posterior_samples(args, kwargs, **global_kwargs)
            for site, values in global_samples.items():
                if site not in obs_plate_sites:
                    results[site] = {name: fn(values, axis=0) for name, fn in summary_fun.items()}
        return {
            name: {site: summaries[name] for site, summaries in results.items()}
            for name in summary_fun
        }

    def _batch_inputs(
        self, tensor_dict: dict[str, torch.Tensor], device: torch.device
    ) -> tuple[list, dict[str, Any]]:
        args, kwargs = self.module._get_fn_args_from_batch(tensor_dict)
        args = [arg.to(device) for arg in args]
        kwargs = {k: v.to(device) if v is not None else v for k, v in kwargs.items()}
        return args, kwargs

    def sample_posterior(
        self,
        adata: AnnData | None = None,
        input_dl: AnnDataLoader | None = None,
        indices: np.ndarray | None = None,
        num_samples: int = 1000,
        return_sites: list | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
        batch_size: int | None = None,
        return_observed: bool = False,
        return_samples: bool = False,
        summary_frequency: int | None = None,
        summary_fun: dict[str, Callable] | None = None,
        **sample_kwargs: Any,
    ) -> dict[str, dict[str, np.ndarray]]:
        """Sample the posterior of every site and summarise the samples.

        Parameters
        ----------
        adata
            AnnData to sample for; the model's when None.
        input_dl
            Loader of the minibatches; built from ``adata`` and ``indices`` when None.
        indices
            Cells to sample for; all when None.
        num_samples
            Number of posterior samples.
        return_sites
            Sites to sample; all when None.
        accelerator, device
            Where to sample.
        batch_size
            Minibatch size; ``settings.batch_size`` when None.
        return_observed
            Also sample observed sites (the count matrix can be large).
        return_samples
            Also return the samples themselves.
        summary_frequency
            Summarise the samples every this many minibatches, to save memory.
        summary_fun
            Summary name to ``fn(samples, axis=0)``, e.g. ``{"means": np.mean}``.
        **sample_kwargs
            Further arguments of :meth:`_get_posterior_samples`.

        Returns
        -------
        dict
            ``"post_sample_means"``, ``"post_sample_stds"``, ``"post_sample_q05"`` and
            ``"post_sample_q95"`` (or the names of ``summary_fun``), each a dict of site name
            to array; with ``return_samples`` also ``"posterior_samples"``, site name to an
            array of shape ``(num_samples, ...)``.

        Notes
        -----
        The module's ``list_obs_plate_vars`` must name the observation (minibatch) plate.
        """
        return self._posterior_samples_minibatch(
            adata=adata,
            input_dl=input_dl,
            indices=indices,
            accelerator=accelerator,
            device=device,
            batch_size=batch_size,
            num_samples=num_samples,
            return_sites=return_sites,
            return_observed=return_observed,
            summary_fun=summary_fun,
            return_samples=return_samples,
            summary_frequency=summary_frequency,
            **sample_kwargs,
        )


__all__ = [
    "PyroJitGuideWarmup",
    "PyroModelGuideWarmup",
    "PyroSampleMixin",
    "PyroSviTrainMixin",
]
