"""Do a model's own samples run off its data range? The RMS that ``align``'s run-off warning reads.

For the demo, every zoo and held-out model, and three models loaded with the wrong prediction type
(the mistake the warning is for), the RMS and largest |x| of N samples of the model's ODE (the
reference solver, 100 steps, unclamped) and whether ``Validation.run_off`` fires (RMS over
``RUN_OFF_RMS`` times the data range's magnitude):

    python benchmarks/run_off.py [--samples 64] [--threads 2]
"""

from __future__ import annotations

from dpm_align.aligner_core.evaluation.validation import RUN_OFF_RMS, run_off_message
from dpm_align.aligner_core.models.loading import load_model
from zoo import labelled_models, sample_scale, scale_args

MISREAD = [("zoo/mnist16-v-cosine", "epsilon"), ("heldout/textures8-v-scaledlin", "epsilon"),
           ("zoo/digits8-eps-linear", "v_prediction")]  # label in the table -> the wrong prediction type


def main() -> None:
    args = scale_args(64)
    paths = labelled_models()
    rows = [("demo", None, None), *((label, path, None) for label, path in paths.items())]
    rows += [(f"models/{label} read as {kind}", paths[label], kind) for label, kind in MISREAD]
    print(f"{args.samples} samples each, reference solver 100 steps; run-off rule: RMS > {RUN_OFF_RMS:g} x the data range's magnitude")
    print("| model | RMS | max abs | run-off warning |\n| --- | --- | --- | --- |")
    for label, path, kind in rows:
        model = load_model(path, prediction_type=kind)
        scale = sample_scale(model, args.samples)
        warned = run_off_message(scale["rms"], model.eps.data_range, 100) is not None
        print(f"| {label} | {scale['rms']:.3g} | {scale['max_abs']:.3g} | {'yes' if warned else 'no'} |", flush=True)


if __name__ == "__main__":
    main()
