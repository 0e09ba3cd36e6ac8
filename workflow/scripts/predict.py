import torch

from jump_n2v.plumbing.locks import output_lock
from jump_n2v.plumbing.logs import rule_logger
from jump_n2v.n2v import load_trained
from jump_n2v.n2v.similarity import check_array
from jump_n2v.predict.arrays import predict_array
from jump_n2v.settings import PredictSettings

torch.set_num_threads(snakemake.threads)
# A second run predicting this channel into the same results folder fails at once, naming this one.
with output_lock(snakemake.output.zarr, log=snakemake.log[0]):
    log = rule_logger(snakemake.log[0])
    trained = load_trained(snakemake.input.model_json)
    settings = PredictSettings.from_dict(snakemake.params.predict)
    # Warns (and QC flags unlike_training_data) when the plate does not look like the training data.
    check_array(trained, snakemake.input.raw, snakemake.output.training_check, settings, model=snakemake.input.model_json, log=log)
    predict_array(
        trained.net,
        trained.mean,
        trained.std,
        snakemake.input.raw,
        snakemake.output.zarr,
        settings,
        attrs={"model": snakemake.input.model_json},
        log=log,
        posterior=trained.posterior,
    )
